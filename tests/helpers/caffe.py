"""Files in Caffe's wire format, written by protobuf (an encoder independent of the reader)."""


import numpy as np


def _caffe_messages():
  """Message classes for the subset of ``caffe.proto`` a ``.caffemodel``'s weights use (same field numbers)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="hdml_test_caffe.proto", package="hdml_test_caffe", syntax="proto2")

  def message(name, *fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, packed, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = ".hdml_test_caffe." + type_name
      if packed:
        f.options.packed = True

  rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
  message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, True, ""))
  for name, packed in (("BlobProto", True), ("BlobProtoUnpacked", False)):
    message(name, ("shape", 7, F.TYPE_MESSAGE, opt, False, "BlobShape"),
            ("data", 5, F.TYPE_FLOAT, rep, packed, ""), ("diff", 6, F.TYPE_FLOAT, rep, packed, ""),
            ("double_data", 8, F.TYPE_DOUBLE, rep, packed, ""),
            ("num", 1, F.TYPE_INT32, opt, False, ""), ("channels", 2, F.TYPE_INT32, opt, False, ""),
            ("height", 3, F.TYPE_INT32, opt, False, ""), ("width", 4, F.TYPE_INT32, opt, False, ""))
  message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, False, ""), ("type", 2, F.TYPE_STRING, opt, False, ""),
          ("bottom", 3, F.TYPE_STRING, rep, False, ""), ("top", 4, F.TYPE_STRING, rep, False, ""),
          ("loss_weight", 5, F.TYPE_FLOAT, rep, False, ""),
          ("blobs", 7, F.TYPE_MESSAGE, rep, False, "BlobProto"),
          ("phase", 10, F.TYPE_INT32, opt, False, ""),
          ("convolution_param", 106, F.TYPE_BYTES, opt, False, ""))
  message("V1LayerParameter", ("bottom", 2, F.TYPE_STRING, rep, False, ""), ("top", 3, F.TYPE_STRING, rep, False, ""),
          ("name", 4, F.TYPE_STRING, opt, False, ""), ("type", 5, F.TYPE_INT32, opt, False, ""),
          ("blobs", 6, F.TYPE_MESSAGE, rep, False, "BlobProtoUnpacked"),
          ("blobs_lr", 7, F.TYPE_FLOAT, rep, False, ""))
  message("NetParameter", ("name", 1, F.TYPE_STRING, opt, False, ""),
          ("layers", 2, F.TYPE_MESSAGE, rep, False, "V1LayerParameter"),
          ("input", 3, F.TYPE_STRING, rep, False, ""), ("input_dim", 4, F.TYPE_INT32, rep, False, ""),
          ("layer", 100, F.TYPE_MESSAGE, rep, False, "LayerParameter"))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"hdml_test_caffe.{m.name}"))
          for m in fdp.message_type}


def write_caffemodel(path, layers, *, v1=False, double=False):
  """Writes ``[(name, type, [arrays])]`` as a ``.caffemodel``.

  Current format: ``layer`` (field 100) with string types and ``BlobShape``
  shapes. ``v1=True``: the legacy ``layers`` (field 2) with enum types, blobs
  unpacked, shapes as ``num/channels/height/width`` (padded to 4-D, as Caffe
  saved them). ``double=True`` stores ``double_data``.
  """
  m = _caffe_messages()
  net = m["NetParameter"](name="test_net", input=["data"], input_dim=[10, 3, 227, 227])
  for i, (name, kind, blobs) in enumerate(layers):
    layer = (net.layers.add(name=name, type=int(kind) if str(kind).isdigit() else 4, bottom=["x"], top=[name])
             if v1 else net.layer.add(name=name, type=kind, bottom=["x"], top=[name], phase=1,
                                      convolution_param=b"\x08\x40\x10\x01"))
    for b in blobs:
      b = np.asarray(b)
      blob = layer.blobs.add()
      if double:
        blob.double_data.extend(b.astype(np.float64).ravel().tolist())
      else:
        blob.data.extend(b.astype(np.float32).ravel().tolist())
      if v1:
        shape = (1,) * (4 - b.ndim) + b.shape
        blob.num, blob.channels, blob.height, blob.width = shape
      else:
        blob.shape.dim.extend(b.shape)
  with open(path, "wb") as f:
    f.write(net.SerializeToString())
