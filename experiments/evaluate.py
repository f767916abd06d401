"""Evaluate a checkpoint of a run on one split.

    python -m experiments.evaluate --config experiments/configs/default.py \\
        --workdir runs/default --split test --which best

``--which`` is ``latest`` (the last periodic checkpoint), ``best`` (the
selected one) or a step number. Prints the metrics as JSON and writes them
to ``<workdir>/eval_<split>_<which>.json``.
"""

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "The run's config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split to evaluate.")
flags.DEFINE_string("which", "latest", "latest | best | a step number.")


def evaluate_checkpoint(cfg, workdir: str, *, split: str = "test", which: str = "latest") -> dict:
  """Restores ``which`` from ``workdir`` and evaluates it on ``split``."""
  from experiments import checkpoints, datasets
  from experiments.train import build_state, evaluate_split, setup_runtime

  if which not in ("latest", "best") and not str(which).isdigit():
    raise ValueError(f"--which must be 'latest', 'best' or a step number, got {which!r}.")
  setup_runtime(cfg)
  data = datasets.load_data(cfg)
  chosen = getattr(data, split)
  if chosen is None:
    raise ValueError(f"the config has no {split!r} split (dataset.num_val_classes is 0).")
  sub = "best" if which == "best" else "checkpoints"
  manager = checkpoints.make_manager(os.path.join(workdir, sub), max_to_keep=10**6)
  if manager.latest_step() is None:
    hint = (" (the run keeps a best checkpoint only when config.selection.split is 'val' or 'test')"
            if which == "best" else "")
    raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}{hint}.")
  step = None if which in ("latest", "best") else int(which)
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}; "
                            f"saved steps: {list(manager.all_steps())}.")
  state = checkpoints.restore(manager, build_state(cfg, data), step)
  metrics = evaluate_split(cfg, state, data, chosen)
  manager.close()
  return {"split": split, "which": which, "step": int(state.step), **metrics}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = evaluate_checkpoint(FLAGS.config, FLAGS.workdir, split=FLAGS.split, which=FLAGS.which)
  print(json.dumps(out, indent=2))
  with open(os.path.join(FLAGS.workdir, f"eval_{FLAGS.split}_{FLAGS.which}.json"), "w") as f:
    json.dump(out, f, indent=2)


def run():
  """Console-script entry point (``hdml-evaluate``)."""
  app.run(main)


if __name__ == "__main__":
  run()
