"""Convert pretrained GoogLeNet weights into a params file that configs can name.

    python -m experiments.convert_weights --source caffemodel --input bvlc_googlenet.caffemodel \\
        --output weights/googlenet.npz
    python -m experiments.convert_weights --source caffe_mat --input googlenet.mat \\
        --output weights/googlenet.npz
    python -m experiments.convert_weights --source torchvision --input googlenet.safetensors \\
        --output weights/googlenet_bn.npz

Then train with ``--config.model.pretrained=weights/googlenet.npz`` (and
``--config.model.backbone=googlenet_bn`` for torchvision weights).
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", None, ["caffemodel", "caffe_mat", "caffe_npz", "torchvision"], "Input format.", required=True)
flags.DEFINE_string("input", None, "The downloaded weights.", required=True)
flags.DEFINE_string("output", None, "The .npz params file to write.", required=True)
flags.DEFINE_enum("lrn", "tf", ["tf", "caffe"], "LRN variant of the googlenet backbone.")


def convert(source: str, input_path: str, output_path: str, lrn: str = "tf") -> dict:
  import jax
  import jax.numpy as jnp

  from hdml_jax import weights
  from hdml_jax.models import get_backbone

  x = jnp.zeros((1, 227, 227, 3))
  if source in ("caffemodel", "caffe_mat", "caffe_npz"):
    net = get_backbone("googlenet", lrn=lrn)
    template = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))["params"]
    if source == "caffemodel":
      from hdml_jax.caffemodel import caffemodel_blobs, read_caffemodel

      blobs = caffemodel_blobs(read_caffemodel(input_path))
    else:
      blobs = weights.load_caffe_mat(input_path) if source == "caffe_mat" else weights.load_npz(input_path)
    variables = {"params": weights.caffe_blobs_to_params(blobs, template)}
  else:
    net = get_backbone("googlenet_bn")
    template = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    variables = weights.torchvision_to_variables(weights.load_torchvision_state(input_path), template)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  weights.save_variables(output_path, variables)
  return variables


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  convert(FLAGS.source, FLAGS.input, FLAGS.output, FLAGS.lrn)
  print(f"wrote {FLAGS.output}")


def run():
  """Command-line entry point (``python3 -m experiments.convert_weights``, from the checkout)."""
  import sys

  from experiments.cli import run_app

  run_app(main, module=__name__ if __name__ != "__main__" else sys.argv[0], summary=__doc__.strip(),
          default_config=None)


if __name__ == "__main__":
  run()
