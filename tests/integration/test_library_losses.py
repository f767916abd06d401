"""Every library loss (and HDML on Multi-Similarity) through the experiments' loop on the default digits config,
and a proxy loss resumed exactly."""

import json
import os
import tempfile

import jax
import numpy as np
import pytest

from hdml_jax.losses import LOSS_NAMES, PROXY_LOSSES, TUPLE_LOSSES
from tests.helpers.runs import fast_default, restored_latest

pytestmark = pytest.mark.slow


def _cfg(name, **overrides):
  return fast_default(**{"loss.name": name, "hdml.enabled": False, "batch_size": 20, "num_steps": 2,
                         "eval_every": 2, "checkpoint_every": 2, "log_every": 1, **overrides})


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n not in TUPLE_LOSSES])   # those: test_experiments
def test_each_loss_trains_checkpoints_and_evaluates(name):
  from experiments.train import train_and_evaluate

  workdir = tempfile.mkdtemp()
  results = train_and_evaluate(_cfg(name), workdir)
  assert results["final"]["step"] == 2 and 0 <= results["final"]["recall@1"] <= 1
  assert results["config"]["loss"]["name"] == name
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  state = restored_latest(_cfg(name), workdir)
  assert int(state.step) == 2
  assert ("loss" in state.params) == (name in PROXY_LOSSES)   # only a loss with parameters has a group
  assert ("proxies" in state.params.get("loss", {})) == (name in PROXY_LOSSES)


def test_proxies_are_checkpointed_and_resumed_exactly():
  from experiments.train import train_and_evaluate

  straight, split = tempfile.mkdtemp(), tempfile.mkdtemp()
  train_and_evaluate(_cfg("proxy_anchor", num_steps=4), straight)
  train_and_evaluate(_cfg("proxy_anchor", num_steps=2), split)        # stopped after step 2 ...
  train_and_evaluate(_cfg("proxy_anchor", num_steps=4), split)        # ... and resumed to step 4
  a = restored_latest(_cfg("proxy_anchor", num_steps=4), straight)
  b = restored_latest(_cfg("proxy_anchor", num_steps=4), split)
  np.testing.assert_array_equal(np.asarray(a.params["loss"]["proxies"]), np.asarray(b.params["loss"]["proxies"]))


def test_hdml_on_multi_similarity_trains_on_m_per_class_batches():
  from experiments.train import train_and_evaluate

  workdir = tempfile.mkdtemp()
  cfg = fast_default(**{"loss.name": "multi_similarity", "hdml.enabled": True, "batch_size": 20, "num_steps": 2,
                        "eval_every": 2, "checkpoint_every": 2, "log_every": 1})
  results = train_and_evaluate(cfg, workdir)
  assert results["final"]["step"] == 2
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [r for r in rows if "train/j_syn" in r]
  assert logged and all(np.isfinite(r["train/j_syn"]) and np.isfinite(r["train/j_gen"]) for r in logged)
  state = restored_latest(cfg, workdir)
  assert int(state.step) == 2 and "generator" in state.params


def test_a_cross_batch_memory_is_checkpointed_and_resumed_exactly():
  from experiments.train import train_and_evaluate

  xbm = {"loss.xbm_size": 50, "loss.xbm_start": 1}
  straight, split = tempfile.mkdtemp(), tempfile.mkdtemp()
  train_and_evaluate(_cfg("multi_similarity", num_steps=4, **xbm), straight)
  train_and_evaluate(_cfg("multi_similarity", num_steps=2, **xbm), split)
  train_and_evaluate(_cfg("multi_similarity", num_steps=4, **xbm), split)
  a = restored_latest(_cfg("multi_similarity", num_steps=4, **xbm), straight)
  b = restored_latest(_cfg("multi_similarity", num_steps=4, **xbm), split)
  assert int(a.memory.filled.sum()) == 50 and int(a.memory.pointer) == (3 * 20) % 50   # steps 1-3 stored
  for x, y in zip(a.memory, b.memory):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hyper_parameters_reach_the_loss_and_the_saved_config():
  from experiments.run_config import load_run_config
  from experiments.train import train_and_evaluate

  workdir, default = tempfile.mkdtemp(), tempfile.mkdtemp()
  train_and_evaluate(_cfg("supervised_contrastive", num_steps=1, **{"loss.kwargs": {'temperature': 0.5}}), workdir)
  train_and_evaluate(_cfg("supervised_contrastive", num_steps=1), default)
  first = lambda d: next(json.loads(line)["train/loss"] for line in open(os.path.join(d, "metrics.jsonl"))
                         if "train/loss" in line)
  assert first(workdir) != first(default)   # same batch and weights, another temperature
  assert load_run_config(workdir).loss.kwargs.to_dict() == {"temperature": 0.5}
