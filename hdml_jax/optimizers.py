"""The three optimizers of HDML training: one Adam per parameter group, each with its step schedule."""

from __future__ import annotations

import jax
import optax

from hdml_jax.config import OptimizerConfig

__all__ = ["GROUP_OF", "GROUPS", "make_optimizer", "schedule"]

#: The parameter groups, each with its own Adam and schedule (``loss``: a library loss's own parameters).
GROUPS = ("metric", "generator", "classifier", "loss")
#: The parameter group each top-level part of the parameters belongs to.
GROUP_OF = {"backbone": "metric", "embedding": "metric", "generator": "generator", "classifier": "classifier",
            "loss": "loss"}


def schedule(optimizer: OptimizerConfig, group: str) -> optax.Schedule:
  """The step schedule of ``group`` (``"metric"``, ``"generator"`` or ``"classifier"``).

  The group's learning rate, multiplied by its decay at each of its boundary steps:

  >>> from hdml_jax.config import OptimizerConfig
  >>> lr = schedule(OptimizerConfig(metric_lr=1.0, metric_boundaries=(10,), metric_decay=0.5), "metric")
  >>> float(lr(9)), float(lr(10))
  (1.0, 0.5)
  """
  if group not in GROUPS:
    raise ValueError(f"schedule: group must be one of {GROUPS}, got {group!r}.")
  lr, decay = getattr(optimizer, f"{group}_lr"), getattr(optimizer, f"{group}_decay")
  return optax.piecewise_constant_schedule(lr, {b: decay for b in getattr(optimizer, f"{group}_boundaries")})


def make_optimizer(optimizer: OptimizerConfig, *, hdml: bool, loss_params: bool = False
                   ) -> optax.GradientTransformation:
  """``optax.multi_transform`` of one Adam per parameter group, each with its schedule.

  The metric group (``backbone``, ``embedding``) is clipped element-wise
  first when ``optimizer.clip_value`` is set; without HDML there is only
  the metric group. ``loss_params`` adds the ``loss`` group (the
  ``params["loss"]`` of a library loss: its proxies).
  """
  metric = optax.adam(schedule(optimizer, "metric"))
  if optimizer.clip_value is not None:
    metric = optax.chain(optax.clip(optimizer.clip_value), metric)
  transforms = {"metric": metric}
  if hdml:
    transforms["generator"] = optax.adam(schedule(optimizer, "generator"))
    transforms["classifier"] = optax.adam(schedule(optimizer, "classifier"))
  if loss_params:
    transforms["loss"] = optax.adam(schedule(optimizer, "loss"))
  labels = lambda params: {k: jax.tree_util.tree_map(lambda _: GROUP_OF[k], v) for k, v in params.items()}
  return optax.multi_transform(transforms, labels)
