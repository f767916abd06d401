"""The one benchmark harness: interleaved rounds, medians, checkouts, fresh processes, the shared flags."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from experiments.benchmarks import harness


def test_every_case_runs_once_per_round_in_order():
  calls, reported = [], []
  cases = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b", "c")}
  values = harness.interleaved(3, cases, lambda r, name, v: reported.append((r, name, v)))
  assert calls == ["a", "b", "c"] * 3
  assert values == {"a": [1, 4, 7], "b": [2, 5, 8], "c": [3, 6, 9]}
  assert reported[:4] == [(0, "a", 1), (0, "b", 2), (0, "c", 3), (1, "a", 4)]


def test_median_and_its_refusal():
  assert harness.median([3.0, 1.0, 2.0]) == 2.0
  assert harness.median([1.0, 2.0]) == 1.5
  with pytest.raises(ValueError, match="no round ran"):
    harness.median([])


def test_checkouts_refuse_a_folder_that_is_not_this_project():
  assert harness.checkouts(None) == {"this": harness.REPO}
  assert harness.checkouts(harness.REPO + "/.")["other"] == harness.REPO
  with tempfile.TemporaryDirectory() as d, pytest.raises(ValueError, match="not a checkout of this project"):
    harness.checkouts(d)


def test_parse_splits_overrides_and_refuses_other_arguments_and_zero_rounds():
  ap = harness.parser("Doc line.\n\nMore.", rounds=4, out="x.json", other_checkout=True, overrides=True)
  args = harness.parse(ap, ["--config.batch_size=8", "--other_checkout", "/x"], overrides=True)
  assert (args.rounds, args.out, args.other_checkout, args.overrides) == (4, "x.json", "/x", {"batch_size": "8"})
  assert ap.description == "Doc line."
  with pytest.raises(SystemExit):
    harness.parse(ap, ["--no_such_flag"], overrides=True)
  with pytest.raises(SystemExit):
    harness.parse(ap, ["--rounds", "0"])


def test_write_results_replaces_the_file_whole():
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "sub", "r.json")
    harness.write_results(path, {"a": 1})
    harness.write_results(path, {"b": [1, 2]})
    assert json.load(open(path)) == {"b": [1, 2]}
    assert os.listdir(os.path.dirname(path)) == ["r.json"]


BENCH = '''
import sys
from experiments.benchmarks import harness
import hdml_jax

def main(argv=None):
  ap = harness.parser(__doc__ or "A test benchmark.", rounds=1, out="x.json")
  args = harness.parse(ap, argv)
  if args._child == "fail":
    raise SystemExit("failed on purpose")
  harness.child_result({"child": args._child, "library": hdml_jax.__file__, "argv": argv})
'''


@pytest.mark.slow
def test_a_fresh_process_runs_this_file_against_the_other_checkouts_library():
  with tempfile.TemporaryDirectory() as d:
    other = os.path.join(d, "other")
    for package in ("hdml_jax", "experiments", os.path.join("experiments", "benchmarks")):   # an older checkout:
      os.makedirs(os.path.join(other, package))                                          # no harness in it
      open(os.path.join(other, package, "__init__.py"), "w").write("")
    script = os.path.join(d, "bench.py")
    open(script, "w").write(BENCH)
    env = {**os.environ, "PYTHONPATH": ""}   # nothing of this checkout is on the path
    out = harness.in_fresh_process(other, script, ["one", "--rounds", "2"], env=env)
    assert out["child"] == "one" and out["argv"] == ["--_child", "one", "--rounds", "2"]
    assert out["library"] == os.path.join(other, "hdml_jax", "__init__.py")
    with pytest.raises(RuntimeError, match="(?s)failed in .*other.*failed on purpose"):
      harness.in_fresh_process(other, script, ["fail"], env=env)


@pytest.mark.slow
def test_the_benchmarks_share_the_harness_flags():
  for name in ("compile", "depthwise", "evaluation", "input_pipeline", "network_step", "paper_run", "train_loop",
               "train_step"):
    proc = subprocess.run([sys.executable, "-m", f"experiments.benchmarks.{name}", "--help"], cwd=harness.REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--rounds" in proc.stdout and "--out" in proc.stdout, name
