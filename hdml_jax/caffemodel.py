"""Reading Caffe's ``.caffemodel`` files (a serialised ``NetParameter``) without Caffe or compiled protos.

A ``.caffemodel`` is one protobuf message in the wire format. This module
decodes the few fields that hold the weights, from the field numbers of
Caffe's ``caffe.proto``:

* ``NetParameter``: ``layer = 100`` (``LayerParameter``, current files) and
  ``layers = 2`` (``V1LayerParameter``, files saved before 2015);
* ``LayerParameter``: ``name = 1``, ``type = 2`` (a string), ``blobs = 7``;
* ``V1LayerParameter``: ``name = 4``, ``type = 5`` (an enum), ``blobs = 6``;
* ``BlobProto``: ``shape = 7`` (``BlobShape``, ``dim = 1``), the legacy
  ``num/channels/height/width = 1..4``, ``data = 5`` (float) and
  ``double_data = 8``.

Every other field is skipped by its wire type. Repeated numbers are read
packed or unpacked, as protobuf allows. A truncated or malformed file raises
:class:`CaffeModelError` naming the file, the byte offset and the message.

:func:`caffemodel_blobs` turns the layers into the ``{name: array,
name + "_bias": array}`` blobs that :func:`hdml_jax.weights.caffe_blobs_to_params`
maps to the ``googlenet`` backbone (``bvlc_googlenet.caffemodel``, the paper's
ImageNet start).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CaffeLayer", "CaffeModelError", "caffemodel_blobs", "read_caffemodel"]

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class CaffeModelError(ValueError):
  """A ``.caffemodel`` that is not a well-formed ``NetParameter``."""


@dataclasses.dataclass
class CaffeLayer:
  """One layer of a ``.caffemodel``: its name, its type and its blobs (in Caffe's order)."""

  name: str
  type: str
  blobs: list[np.ndarray]


class _Reader:
  """Fields of one message in ``buf[start:end]``."""

  def __init__(self, buf: memoryview, start: int, end: int, where: str):
    self.buf, self.pos, self.end, self.where = buf, start, end, where

  def _fail(self, what: str):
    raise CaffeModelError(f"{self.where}: {what} at byte {self.pos}; the file is truncated or not a .caffemodel.")

  def varint(self) -> int:
    value, shift = 0, 0
    while True:
      if self.pos >= self.end:
        self._fail("a number runs past the end of its message")
      byte = self.buf[self.pos]
      self.pos += 1
      value |= (byte & 0x7F) << shift
      if not byte & 0x80:
        return value
      shift += 7
      if shift > 63:
        self._fail("a number is longer than 10 bytes")

  def fields(self):
    """``(field number, wire type, value)``: an int, or ``(start, end)`` for a length-delimited field."""
    while self.pos < self.end:
      key = self.varint()
      number, wire = key >> 3, key & 7
      if number == 0:
        self._fail("field number 0")
      if wire == _VARINT:
        yield number, wire, self.varint()
      elif wire == _LEN:
        size = self.varint()
        if self.pos + size > self.end:
          self._fail(f"field {number} of {size} bytes runs past the end of its message")
        yield number, wire, (self.pos, self.pos + size)
        self.pos += size
      elif wire in (_I64, _I32):
        size = 8 if wire == _I64 else 4
        if self.pos + size > self.end:
          self._fail(f"field {number} runs past the end of its message")
        yield number, wire, (self.pos, self.pos + size)
        self.pos += size
      else:
        self._fail(f"unsupported wire type {wire} (field {number})")

  def sub(self, span: tuple[int, int], where: str) -> "_Reader":
    return _Reader(self.buf, span[0], span[1], where)


def _numbers(reader: _Reader, wire: int, value, dtype: str, where: str) -> np.ndarray:
  """One field occurrence of a repeated float/double: packed (wire type 2) or a single value."""
  start, end = value
  size = np.dtype(dtype).itemsize
  if wire == _LEN:
    if (end - start) % size:
      raise CaffeModelError(f"{where}: a packed field of {end - start} bytes is not a whole number of "
                            f"{size}-byte values; the file is damaged.")
  elif wire != (_I32 if size == 4 else _I64):
    raise CaffeModelError(f"{where}: blob data with wire type {wire}; expected packed or fixed-width numbers.")
  return np.frombuffer(reader.buf[start:end], dtype)


def _blob(reader: _Reader, where: str) -> np.ndarray:
  legacy = {1: 0, 2: 0, 3: 0, 4: 0}
  dims, floats, doubles = None, [], []
  for number, wire, value in reader.fields():
    if number in legacy and wire == _VARINT:
      legacy[number] = value
    elif number == 7 and wire == _LEN:
      dims = []
      for n, w, v in reader.sub(value, where).fields():
        if n == 1 and w == _VARINT:
          dims.append(v)
        elif n == 1 and w == _LEN:   # packed int64s
          r = reader.sub(v, where)
          while r.pos < r.end:
            dims.append(r.varint())
    elif number == 5:
      floats.append(_numbers(reader, wire, value, "<f4", where))
    elif number == 8:
      doubles.append(_numbers(reader, wire, value, "<f8", where))
  data = np.concatenate(floats) if floats else np.concatenate(doubles) if doubles else np.zeros(0, np.float32)
  if dims is None:
    dims = [legacy[k] for k in (1, 2, 3, 4)]
    if not any(dims):
      dims = [data.size]
  shape = tuple(int(d) for d in dims)
  if int(np.prod(shape)) != data.size:
    raise CaffeModelError(f"{where}: the blob's shape {shape} holds {int(np.prod(shape))} values, "
                          f"but it stores {data.size}.")
  return data.astype(np.float32).reshape(shape)   # a writable copy, not a view of the file


def _text(reader: _Reader, span) -> str:
  return bytes(reader.buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def read_caffemodel(path: str) -> list[CaffeLayer]:
  """The layers of a ``.caffemodel``, in file order (layers without blobs included).

  V1 layers report their type as ``"V1:<enum number>"``.
  """
  with open(path, "rb") as f:
    buf = memoryview(f.read())
  top = _Reader(buf, 0, len(buf), path)
  layers = []
  for number, wire, value in top.fields():
    if wire != _LEN or number not in (2, 100):
      continue
    v1 = number == 2
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    where = f"{path}: layer {len(layers)}"
    layer = CaffeLayer(name="", type="", blobs=[])
    spans = []
    for n, w, v in top.sub(value, where).fields():
      if n == name_field and w == _LEN:
        layer.name = _text(top, v)
        where = f"{path}: layer {layer.name!r}"
      elif n == type_field:
        layer.type = f"V1:{v}" if v1 and w == _VARINT else _text(top, v) if w == _LEN else str(v)
      elif n == blob_field and w == _LEN:
        spans.append(v)
    layer.blobs = [_blob(top.sub(s, f"{where} blob {i}"), f"{where} blob {i}") for i, s in enumerate(spans)]
    layers.append(layer)
  if not layers:
    raise CaffeModelError(f"{path}: no layers found; is this a .caffemodel (a serialised NetParameter)?")
  return layers


def caffemodel_blobs(layers: list[CaffeLayer], *, skip_prefixes: tuple[str, ...] = ("loss",)) -> dict:
  """``{layer: weights, layer + "_bias": bias}`` of the layers with blobs (the ``.mat`` blob names).

  Layers whose name starts with one of ``skip_prefixes`` are left out (in
  ``bvlc_googlenet`` the auxiliary heads ``loss1/*``, ``loss2/*`` and the
  classifier ``loss3/classifier``, which the backbone has not). A bias
  stored with the legacy 4-D shape (``1 x 1 x 1 x N``) becomes a vector. A
  layer with other than one or two blobs, or a name seen twice, raises.
  """
  out = {}
  for layer in layers:
    if not layer.blobs or layer.name.startswith(tuple(skip_prefixes)):
      continue
    if len(layer.blobs) > 2:
      raise CaffeModelError(f"layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} blobs; expected weights "
                            "and at most a bias.")
    if layer.name in out:
      raise CaffeModelError(f"layer name {layer.name!r} appears twice in the .caffemodel.")
    out[layer.name] = layer.blobs[0]
    if len(layer.blobs) == 2:
      bias = layer.blobs[1]
      out[layer.name + "_bias"] = bias.reshape(-1) if sum(d != 1 for d in bias.shape) <= 1 else bias
  return out

