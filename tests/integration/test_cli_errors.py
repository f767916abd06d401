"""Every user error, through every command line: one line naming what is wrong and where, exit status 2.

A traceback is printed only for a bug, or with ``--verbose`` / ``HDML_VERBOSE=1``; Ctrl-C exits 130 with
one line naming the newest checkpoint. Each case runs the real entry point in a fresh process.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from experiments import cli
from tests.helpers.library import CUB100, REPO
from tests.helpers.photos import photos

pytestmark = pytest.mark.slow   # subprocesses

DIGITS = ["--config", os.path.join(REPO, "experiments", "configs", "default.py"), "--config.num_steps=2",
          "--config.log_every=1", "--config.eval_every=2", "--config.checkpoint_every=1", "--config.plots=False",
          "--config.num_devices=1", "--config.compilation_cache_dir="]


def image_args(data_dir, train=(0, 2), test=(2, 4)):
  return ["--config", os.path.join(REPO, "experiments", "configs", "cub100.py"), f"--config.dataset.data_dir={data_dir}",
          f"--config.dataset.train_classes={train}", f"--config.dataset.test_classes={test}",
          "--config.dataset.num_val_classes=0", "--config.selection.split=none", "--config.dataset.resize=20",
          "--config.dataset.crop=16", "--config.model.backbone_kwargs={'widths': (4,), 'depth': 1}",
          "--config.model.embedding_dim=8", "--config.model.generator_hidden=16", "--config.batch_size=4",
          "--config.num_steps=2", "--config.num_devices=1", "--config.plots=False", "--config.compilation_cache_dir="]


def run(entry, *args, env=None, timeout=240):
  argv0 = os.path.join(REPO, *entry.split(".")) + ".py"
  code = f"import sys; sys.argv = {[argv0, *args]!r}; from {entry} import run; run()"
  return subprocess.run([sys.executable, "-c", code], cwd=tempfile.mkdtemp(), capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))


def run_module(module, *args, timeout=240):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def assert_one_line(proc, prog, *needles):
  __tracebackhide__ = True
  assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith(f"{prog}: error: "), errors[0]
  for needle in needles:
    assert needle in errors[0], errors[0]


def image_folder(root, per_class=(3, 3, 3, 3)):
  """A folder of class folders of real photographs (4 classes)."""
  for (species, paths), n in zip(photos(len(per_class), max(per_class)), per_class):
    os.makedirs(os.path.join(root, species))
    for p in paths[:n]:
      shutil.copy(p, os.path.join(root, species))
  return sorted(os.listdir(root))


MAIN = "python3 -m experiments.main"


def test_an_odd_npair_batch():
  proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.batch_size=9")
  assert_one_line(proc, MAIN, "N-pair batch size must be even, got 9")


def test_recall_ks_with_zero_is_refused_before_training():
  proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.eval.recall_ks=(0, 1)")
  assert_one_line(proc, MAIN, "config.eval.recall_ks must be positive integers", "(0, 1)")


def test_a_generator_without_units_is_refused_before_training():
  proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.model.generator_hidden=0")
  assert_one_line(proc, MAIN, "config.model.generator_hidden must be a positive integer, got 0")


def test_more_devices_than_present():
  proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.num_devices=99")
  assert_one_line(proc, MAIN, "config.num_devices=99", "device(s) are present")


def test_a_workdir_that_is_a_file():
  path = os.path.join(tempfile.mkdtemp(), "taken")
  open(path, "w").close()
  proc = run("experiments.main", *DIGITS, "--workdir", path)
  assert_one_line(proc, MAIN, path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_workdir_that_cannot_be_created():
  # Root writes anywhere a permission check would stop a user; /proc refuses everyone.
  path = "/proc/self/hdml_jax_workdir"
  proc = run("experiments.main", *DIGITS, "--workdir", path)
  assert_one_line(proc, MAIN, path)


def test_a_missing_data_dir():
  missing = os.path.join(tempfile.mkdtemp(), "nowhere")
  proc = run("experiments.main", *image_args(missing), "--workdir", tempfile.mkdtemp())
  assert_one_line(proc, MAIN, missing)


def test_an_empty_class_folder():
  root = tempfile.mkdtemp()
  classes = image_folder(root)
  for f in os.listdir(os.path.join(root, classes[1])):
    os.remove(os.path.join(root, classes[1], f))
  proc = run("experiments.main", *image_args(root), "--workdir", tempfile.mkdtemp())
  assert_one_line(proc, MAIN, classes[1])


def test_a_class_with_a_single_image():
  root = tempfile.mkdtemp()
  image_folder(root, per_class=(3, 1, 3, 3))
  proc = run("experiments.main", *image_args(root), "--workdir", tempfile.mkdtemp())
  assert_one_line(proc, MAIN, "every class needs at least 2 images; classes [1] have fewer")


def test_a_truncated_jpeg():
  root = tempfile.mkdtemp()
  classes = image_folder(root)
  victim = os.path.join(root, classes[0], sorted(os.listdir(os.path.join(root, classes[0])))[0])
  with open(victim, "r+b") as f:
    f.truncate(200)
  proc = run("experiments.main", *image_args(root), "--workdir", tempfile.mkdtemp())
  assert_one_line(proc, MAIN, os.path.basename(victim))


def test_overlapping_class_ranges():
  proc = run("experiments.main", *image_args(CUB100, train=(0, 3), test=(2, 5)), "--workdir", tempfile.mkdtemp())
  assert_one_line(proc, MAIN, "overlap")


def test_a_missing_and_a_damaged_weight_file():
  missing = os.path.join(tempfile.mkdtemp(), "none.npz")
  proc = run("experiments.main", *image_args(CUB100), "--workdir", tempfile.mkdtemp(),
             f"--config.model.pretrained={missing}")
  assert_one_line(proc, MAIN, missing)
  damaged = os.path.join(tempfile.mkdtemp(), "damaged.npz")
  with open(damaged, "wb") as f:
    f.write(b"PK\x03\x04 not really a zip archive")
  proc = run("experiments.main", *image_args(CUB100), "--workdir", tempfile.mkdtemp(),
             f"--config.model.pretrained={damaged}")
  assert_one_line(proc, MAIN, damaged)


def test_a_resume_refused_because_the_config_changed():
  workdir = tempfile.mkdtemp()
  first = run("experiments.main", *DIGITS, "--workdir", workdir)
  assert first.returncode == 0, first.stderr[-3000:]
  proc = run("experiments.main", *DIGITS, "--workdir", workdir, "--config.seed=7")
  assert_one_line(proc, MAIN, "holds a run with another config", "seed: 0 in the run, 7 now")


def test_a_diverging_run():
  proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.num_steps=6",
             "--config.optimizer.metric_boundaries=(2,)", "--config.optimizer.metric_decay=1e34")
  assert_one_line(proc, MAIN, "not finite at step", "last finite checkpoint")


def test_a_damaged_saved_config_is_named():
  workdir = tempfile.mkdtemp()
  assert run("experiments.main", *DIGITS, "--workdir", workdir).returncode == 0
  path = os.path.join(workdir, "config.json")
  with open(path, "r+") as f:
    f.truncate(100)
  proc = run("experiments.evaluate", "--workdir", workdir)
  assert_one_line(proc, "python3 -m experiments.evaluate", path, "is not valid JSON")


def test_evaluate_on_another_models_workdir_is_one_line():
  workdir = tempfile.mkdtemp()
  assert run("experiments.main", *DIGITS, "--workdir", workdir).returncode == 0
  other = os.path.join(REPO, "experiments", "configs", "default.py")
  proc = run("experiments.evaluate", "--workdir", workdir, "--config", other, "--config.model.embedding_dim=4",
             "--config.num_devices=1")
  assert_one_line(proc, "python3 -m experiments.evaluate", "holds checkpoints of a different model")


def test_pretrain_with_no_steps():
  proc = run("experiments.pretrain", "--config", os.path.join(REPO, "experiments", "configs", "cub100.py"),
             "--workdir", tempfile.mkdtemp(), "--config.num_steps=0")
  assert_one_line(proc, "python3 -m experiments.pretrain", "config.num_steps must be a positive integer, got 0")


def test_convert_weights_on_a_missing_and_a_truncated_caffemodel():
  missing = os.path.join(tempfile.mkdtemp(), "none.caffemodel")
  out = os.path.join(tempfile.mkdtemp(), "w.npz")
  proc = run("experiments.convert_weights", "--source", "caffemodel", "--input", missing, "--output", out)
  assert_one_line(proc, "python3 -m experiments.convert_weights", missing)
  truncated = os.path.join(tempfile.mkdtemp(), "cut.caffemodel")
  with open(truncated, "wb") as f:
    f.write(b"\x0a\x09bvlc_goo")   # a name field cut short
  proc = run("experiments.convert_weights", "--source", "caffemodel", "--input", truncated, "--output", out)
  assert_one_line(proc, "python3 -m experiments.convert_weights", truncated)


def test_a_study_and_a_benchmark_deliver_errors_the_same_way():
  proc = run_module("experiments.studies.cub100_tables", "--workdir", tempfile.mkdtemp(), "--table", "regime",
                    "--regimes", "pretrained")
  assert_one_line(proc, "python3 -m experiments.studies.cub100_tables", "run --table lr first")
  proc = run_module("experiments.benchmarks.train_loop", "--config.no_such_key=1")
  assert_one_line(proc, "python3 -m experiments.benchmarks.train_loop", "unknown config key --config.no_such_key")


def test_verbose_shows_the_traceback_of_a_user_error():
  for how in (["--verbose"], []):
    env = {} if how else {cli.VERBOSE_ENV: "1"}
    proc = run("experiments.main", *DIGITS, "--workdir", tempfile.mkdtemp(), "--config.num_devices=99", *how,
               env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "ValueError: config.num_devices=99" in proc.stderr


def test_ctrl_c_names_the_newest_checkpoint():
  workdir = tempfile.mkdtemp()
  argv0 = os.path.join(REPO, "experiments", "main.py")
  args = [*DIGITS, "--workdir", workdir, "--config.num_steps=100000", "--config.eval_every=100000"]
  code = f"import sys; sys.argv = {[argv0, *args]!r}; from experiments.main import run; run()"
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=tempfile.mkdtemp(), stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
  folder = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 180
  while time.time() < deadline and not (os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))):
    time.sleep(0.5)
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if "interrupted" in line]
  assert len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith(f"{MAIN}: interrupted: the newest checkpoint is step "), lines[0]
  assert f"in {folder}; run the same command to resume from it." in lines[0]


def test_a_bug_keeps_its_traceback():
  def buggy(argv):
    raise RuntimeError("a bug")

  with pytest.raises(RuntimeError, match="a bug"):
    cli.deliver_errors(buggy, "prog")([])


def test_one_line_joins_the_lines_of_a_message():
  assert cli.one_line(ValueError("first\n  second\n")) == "first; second"
  assert cli.one_line(KeyError("unknown key")) == "unknown key"
  assert cli.one_line(FileNotFoundError()) == "FileNotFoundError"
