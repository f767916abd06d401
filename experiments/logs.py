"""Metric writers (JSON lines and TensorBoard) and the console progress bar."""

from __future__ import annotations

import json
import math
import os

from tqdm import tqdm


class MetricWriter:
  """Writes ``{step, metrics...}`` to ``metrics.jsonl`` and TensorBoard events."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter

    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **{k: (v if math.isfinite(v) else str(v))
                                                         for k, v in clean.items()}}) + "\n")
    for k, v in clean.items():
      self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """tqdm bar: steps/s, ETA and the latest loss."""

  def __init__(self, start: int, total: int, *, enabled: bool = True):
    self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                     disable=not enabled, smoothing=0.1)
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
