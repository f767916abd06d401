"""Evaluate a checkpoint of a run on one split.

    python -m experiments.evaluate --workdir runs/default
    python -m experiments.evaluate --workdir runs/cub --split val --which best

The model and data are rebuilt from the config the run saved in
``<workdir>/config.json`` (its command-line overrides included); ``--config``
replaces it (e.g. for a run of an older version, which saved none).
``--which`` is ``latest`` (the last periodic checkpoint that reads back: a
damaged newer one is named in a warning and passed over), ``best`` (the
selected one) or a step number. Prints the metrics as JSON and writes them
to ``<workdir>/eval_<split>_<which>.json``.
"""

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.cli import exit_on_unknown_override

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

FLAGS = flags.FLAGS
# ml_collections applies --config.<key> overrides as the flag is defined: check the keys first.
exit_on_unknown_override(None)
config_flags.DEFINE_config_file("config", None, "A config file to use instead of the one the run saved.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split to evaluate.")
flags.DEFINE_string("which", "latest", "latest | best | a step number.")


def evaluate_checkpoint(cfg, workdir: str, *, split: str = "test", which: str = "latest") -> dict:
  """Restores ``which`` from ``workdir`` and evaluates it on ``split``.

  ``cfg`` None: the config saved in the workdir.
  """
  from experiments import checkpoints, datasets
  from experiments.run_config import load_run_config
  from experiments.runtime import build_state, setup_runtime
  from experiments.selection import evaluate_split

  if which not in ("latest", "best") and not str(which).isdigit():
    raise ValueError(f"--which must be 'latest', 'best' or a step number, got {which!r}.")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir!r} does not exist.")
  if cfg is None:
    cfg = load_run_config(workdir)
  sub = "best" if which == "best" else "checkpoints"
  if not os.path.isdir(os.path.join(workdir, sub)):
    hint = (f" (this run has selection.split={cfg.selection.split!r}: a best checkpoint is kept only "
            "when it is 'val' or 'test'; use --which latest)" if which == "best" else "")
    raise FileNotFoundError(f"no {which} checkpoint in {os.path.join(os.path.abspath(workdir), sub)}{hint}.")
  setup_runtime(cfg)
  data = datasets.load_data(cfg)
  chosen = getattr(data, split)
  if chosen is None:
    raise ValueError(f"the config has no {split!r} split (dataset.num_val_classes is 0).")
  manager = checkpoints.make_manager(os.path.join(workdir, sub), max_to_keep=10**6)
  if manager.latest_step() is None:
    hint = (" (the run keeps a best checkpoint only when config.selection.split is 'val' or 'test')"
            if which == "best" else "")
    raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}{hint}.")
  step = None if which in ("latest", "best") else int(which)
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}; "
                            f"saved steps: {list(manager.all_steps())}.")
  template = build_state(cfg, data)
  if step is None:   # the newest checkpoint that reads back; a damaged newer one is named in a warning
    state = checkpoints.restore_newest_readable(manager, template)
  else:
    state = checkpoints.restore_readable(manager, template, step)
  metrics = evaluate_split(cfg, state, data, chosen)
  manager.close()
  return {"split": split, "which": which, "step": int(state.step), **metrics}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").setLevel(logging.WARNING)
  out = evaluate_checkpoint(FLAGS.config, FLAGS.workdir, split=FLAGS.split, which=FLAGS.which)
  print(json.dumps(out, indent=2))
  with open(os.path.join(FLAGS.workdir, f"eval_{FLAGS.split}_{FLAGS.which}.json"), "w") as f:
    json.dump(out, f, indent=2)


def run():
  """Command-line entry point (``python3 -m experiments.evaluate``, from the checkout)."""
  from experiments.cli import run_app

  run_app(main, module=__name__ if __name__ != "__main__" else sys.argv[0], summary=__doc__.strip(),
          default_config=None)


if __name__ == "__main__":
  run()
