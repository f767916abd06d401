"""Metric writers (JSON lines and TensorBoard) and the console progress bar."""

from __future__ import annotations

import json
import math
import os
import re

from tqdm import tqdm


def tag(name: str) -> str:
  """A TensorBoard-legal tag for a metric name (``val/recall@1`` -> ``val/recall_at_1``)."""
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name.replace("@", "_at_"))


class MetricWriter:
  """Writes ``{step, metrics...}`` to ``metrics.jsonl`` and TensorBoard events.

  ``resume_step``: the step the run starts from; rows of ``metrics.jsonl``
  logged after it (by a run that was killed or stopped after its last
  checkpoint) are dropped, so the file holds exactly one row per logged step
  and kind. Non-finite values are written as ``null``.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter

    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      keep = [line for line in open(path) if line.strip() and _step_of(line) <= resume_step]
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, path)
    self._jsonl = open(path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **{k: (v if math.isfinite(v) else None)
                                                         for k, v in clean.items()}},
                                 allow_nan=False) + "\n")
    for k, v in clean.items():
      self._tb.add_scalar(tag(k), v, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      os.fsync(self._jsonl.fileno())
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _step_of(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return 1 << 62   # a torn last line (killed mid-write): dropped


class Progress:
  """tqdm bar: steps/s, ETA and the latest loss."""

  def __init__(self, start: int, total: int, *, enabled: bool = True):
    # A run resumed at its last step has nothing to show (tqdm would print the full bar twice).
    self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                     disable=not enabled or start >= total, smoothing=0.1)
    self._last = start

  def update(self, step: int, loss: float) -> None:
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{loss:.4g}")

  def close(self) -> None:
    self._bar.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
