"""Model selection: evaluating a split during training, and the checkpoint the selection keeps."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os

import jax
import numpy as np

from experiments import checkpoints, datasets
from hdml_jax import evaluation

__all__ = ["BestCheckpoint", "Evaluations", "embed_split", "evaluate_split", "selection_name"]

def _eval_variables(state):
  """``(params, batch_stats)`` on one local device: a replicated state's own copy (no host round trip)."""
  def one(x):
    return x.addressable_data(0) if isinstance(x, jax.Array) else x

  return jax.device_put(jax.tree_util.tree_map(one, (state.params, state.batch_stats)), jax.local_devices()[0])

def embed_split(state, data: datasets.Data, split: datasets.Split, batch_size: int, mesh=None) -> np.ndarray:
  """Embeddings of a whole split, in fixed-size batches (one compilation).

  The variables go to the device once; the next batch is read and prepared
  in a background thread while the device embeds the current one, and the
  results are fetched at the end, so the device is not left waiting on the
  host between batches. With a ``mesh`` of several devices (one process),
  each batch is split over the mesh's ``data`` axis and the variables are
  replicated: the split is embedded data-parallel (the batch rounded up to
  a multiple of the device count).
  """
  n = len(split)
  if n == 0:
    raise ValueError("embed_split: the split has no images.")
  sharded = mesh is not None and mesh.size > 1 and jax.process_count() == 1
  if sharded:
    from hdml_jax import parallel

    batch_size = -(-batch_size // mesh.size) * mesh.size
    params, stats = parallel.replicate_state(jax.tree_util.tree_map(
        lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, (state.params, state.batch_stats)), mesh)
    place = lambda x: jax.device_put(x, parallel.data_sharded(mesh))
  else:
    params, stats = _eval_variables(state)
    place = lambda x: x
  batches = datasets.eval_batches(data, split, batch_size)
  out = []
  with concurrent.futures.ThreadPoolExecutor(1) as pool:   # the generator only ever advances in this thread
    pending = pool.submit(next, batches, None)
    while (item := pending.result()) is not None:
      pending = pool.submit(next, batches, None)
      x = np.asarray(item[1])
      if x.shape[0] < batch_size:   # the last batch, padded: one compiled shape
        x = np.concatenate([x, np.zeros((batch_size - x.shape[0],) + x.shape[1:], x.dtype)])
      out.append(state.apply_fn(params, stats, data.model_input(place(x))))   # dispatched, not waited for
  return np.concatenate([np.asarray(o) for o in out])[:n]

def evaluate_split(cfg, state, data, split, *, clustering: bool = True, embeddings: np.ndarray | None = None) -> dict:
  """The metrics of ``state`` on ``split`` (``embeddings``: the split's, if already computed; ``state`` is then
  not read)."""
  emb = embed_split(state, data, split, cfg.eval.batch_size) if embeddings is None else embeddings
  ks = [k for k in cfg.eval.recall_ks if k <= len(split.labels) - 1]
  return evaluation.evaluate(emb, split.labels, recall_ks=ks, clustering=clustering,
                             kmeans_backend=cfg.eval.kmeans_backend, kmeans_seed=cfg.seed,
                             kmeans_protocol=cfg.eval.kmeans_protocol)

_CLUSTERING = ("nmi", "f1")

class Evaluations:
  """A run's evaluations: each checkpoint's embeddings of a split computed once, and its metrics once.

  Keyed by ``(step, split name)``: the selection at the last step, the final
  report, the best checkpoint when it is the final one, and the plots all read
  the same embeddings. The entries of the two most recent steps are kept.
  With the run's ``mesh``, splits are embedded data-parallel over it
  (:func:`embed_split`).
  """

  def __init__(self, cfg, data: datasets.Data, mesh=None):
    self.cfg, self.data, self.mesh = cfg, data, mesh
    self._embeddings, self._metrics = {}, {}

  def _split(self, name: str) -> datasets.Split:
    split = {"val": self.data.val, "test": self.data.test}[name]
    if split is None:
      raise ValueError(f"the data have no {name!r} split.")
    return split

  def _evict(self, step: int) -> None:
    steps = sorted({s for s, _ in self._embeddings} | {step})[-2:]
    for cache in (self._embeddings, self._metrics):
      for key in [k for k in cache if k[0] not in steps]:
        del cache[key]

  def embeddings(self, step: int, state, split: str) -> np.ndarray:
    """The embeddings of ``split`` ("val" or "test") by the run's state at ``step``.

    ``state`` is that state, or a function returning it (called only when the
    embeddings are not already known: a checkpoint restored only if needed).
    """
    key = (int(step), split)
    if key not in self._embeddings:
      self._evict(key[0])
      state = state() if callable(state) else state
      self._embeddings[key] = embed_split(state, self.data, self._split(split), self.cfg.eval.batch_size,
                                          mesh=self.mesh)
    return self._embeddings[key]

  def metrics(self, step: int, state, split: str, *, clustering: bool = True) -> dict:
    """:func:`evaluate_split` at ``step`` on ``split``, computed once per (step, split, clustering).

    ``state`` as for :meth:`embeddings`.
    """
    key = (int(step), split, clustering)
    if not clustering and (key[0], split, True) in self._metrics:   # the clustering metrics' recall part
      full = self._metrics[(key[0], split, True)]
      return {k: v for k, v in full.items() if k not in _CLUSTERING}
    if key not in self._metrics:
      emb = self.embeddings(step, state, split)
      self._metrics[key] = evaluate_split(self.cfg, None if callable(state) else state, self.data,
                                          self._split(split), clustering=clustering, embeddings=emb)
    return dict(self._metrics[key])

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
    with checkpoints.uninterrupted():   # Ctrl-C here waits for the whole best checkpoint
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
