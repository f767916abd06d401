"""Model selection: evaluating a split during training, and the checkpoint the selection keeps."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from experiments import checkpoints, datasets
from experiments.runtime import local_copy
from hdml_jax import evaluation
from hdml_jax.inference import embed_in_batches

__all__ = ["BestCheckpoint", "embed_split", "evaluate_split", "selection_name"]

def embed_split(state, data: datasets.Data, split: datasets.Split, batch_size: int) -> np.ndarray:
  """Embeddings of a whole split, streamed in fixed-size batches."""
  state = local_copy(state)
  out = [embed_in_batches(state, images, batch_size=batch_size)
         for _, images in datasets.eval_batches(data, split, batch_size)]
  return np.concatenate(out)

def evaluate_split(cfg, state, data, split, *, clustering: bool = True) -> dict:
  emb = embed_split(state, data, split, cfg.eval.batch_size)
  ks = [k for k in cfg.eval.recall_ks if k <= len(split.labels) - 1]
  return evaluation.evaluate(emb, split.labels, recall_ks=ks, clustering=clustering,
                             kmeans_backend=cfg.eval.kmeans_backend, kmeans_seed=cfg.seed,
                             kmeans_protocol=cfg.eval.kmeans_protocol)

class BestCheckpoint:
  """The checkpoint the selection keeps: ``workdir/best`` (one checkpoint) and ``workdir/best.json``.

  ``offer(step, value, state)`` keeps the state if ``value`` is strictly
  higher than the best so far (the first offer always wins): on a tie the
  earlier step stays. A NaN value (a metric with no query to average over)
  never beats anything, and any number beats a NaN best, so a first NaN
  offer is kept only until a number comes. ``best.json`` (``{"step",
  "value", "selection"}``, a NaN written as ``null``) is written atomically
  once the checkpoint is on disk, and read back when a run is resumed, so
  an interrupted run goes on comparing with the best it had found.
  """

  def __init__(self, workdir: str, selection: str, *, is_main: bool = True):
    self.path = os.path.join(workdir, "best.json")
    self.selection = selection
    self.is_main = is_main
    self.manager = checkpoints.make_manager(os.path.join(workdir, "best"), max_to_keep=1)
    self.best = json.load(open(self.path)) if os.path.exists(self.path) else None
    steps = self.manager.all_steps()
    if self.best is not None and self.best["step"] not in steps:
      # A kill between saving a new best checkpoint (which replaces the old one) and writing its
      # best.json: the checkpoint kept is the newer one, whose value beat the one recorded.
      if not steps:
        logging.warning("%s names step %d, but %s holds no checkpoint: the selection starts over",
                        self.path, self.best["step"], self.manager.directory)
        self.best = None
      else:
        logging.warning("%s names step %d, but the best checkpoint kept is step %d (saved just before an "
                        "interruption); keeping it, with the recorded value %s as a lower bound of its own",
                        self.path, self.best["step"], max(steps), self.best["value"])
        self.best = {**self.best, "step": max(steps)}
        if is_main:
          checkpoints.write_json_atomic(self.path, self.best)

  def offer(self, step: int, value: float, state) -> bool:
    """Keeps ``state`` if ``value`` beats the best so far; returns whether it did."""
    if self.best is not None:
      best = self.best["value"]
      if best is None or math.isnan(best):   # null in best.json is a NaN written as strict JSON
        if math.isnan(value):
          return False
      elif not value > best:
        return False
    self.best = {"step": step, "value": value, "selection": self.selection}
    checkpoints.save(self.manager, step, state)
    self.manager.wait_until_finished()
    if self.is_main:
      checkpoints.write_json_atomic(self.path, self.best)
    return True

  def restore(self, template):
    """The kept state (restored into ``template``)."""
    if self.best is None:
      raise FileNotFoundError(f"no best checkpoint yet ({self.path} does not exist).")
    return checkpoints.restore(self.manager, template, self.best["step"])

  def close(self) -> None:
    self.manager.close()


def selection_name(cfg) -> str:
  """How ``results.json`` and ``best.json`` name the selection rule (the test rule is named as such)."""
  if cfg.selection.split == "test":
    return f"test/{cfg.selection.metric} (the reference's rule: selects on the test set)"
  return f"{cfg.selection.split}/{cfg.selection.metric}"
