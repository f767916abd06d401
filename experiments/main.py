"""Train and evaluate HDML from a config file.

    python -m experiments.main --config experiments/configs/default.py --workdir runs/default
    python -m experiments.main --config experiments/configs/cub100.py --workdir runs/cub \\
        --config.loss.name=triplet --config.batch_size=120

Prints the final metrics; writes checkpoints, metrics.jsonl, TensorBoard
events, results.json and plots under --workdir.
"""

import json
import logging
import os
import sys

# Quiet the "Unable to initialize backend 'tpu'" notices on CPU and GPU hosts.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

from absl import app, flags  # noqa: E402  (after the logging set-up above)
from ml_collections import config_flags  # noqa: E402

from experiments.cli import exit_on_unknown_override  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

FLAGS = flags.FLAGS
# ml_collections applies --config.<key> overrides as the flag is defined: check the keys first.
exit_on_unknown_override(_DEFAULT_CONFIG)
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics, results and plots go.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from experiments.train import train_and_evaluate

  # A bad config is refused in one line before anything starts (train_and_evaluate validates it first).
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  summary = {"final (test)": {k: v for k, v in results["final"].items() if k != "num_queries_map@r"}}
  if results["best"]:
    summary["best (" + results["best"]["selection"] + ", test)"] = {
        k: v for k, v in results["best"].items() if k not in ("num_queries_map@r", "selection", "value")}
  summary["wall_seconds"] = round(results["wall_seconds"], 1)
  print(json.dumps(summary, indent=2))
  print(f"results, checkpoints and plots: {os.path.abspath(FLAGS.workdir)}")


def run():
  """Command-line entry point (``python3 -m experiments.main``, from the checkout)."""
  from experiments.cli import run_app

  run_app(main, module=__name__ if __name__ != "__main__" else sys.argv[0], summary=__doc__.strip(),
          default_config=_DEFAULT_CONFIG, workdir=lambda: FLAGS.workdir)


if __name__ == "__main__":
  run()
