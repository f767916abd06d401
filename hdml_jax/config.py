"""The static hyper-parameters of HDML and of its optimizers: plain dataclasses.

This module imports nothing of the library's training code, so any layer
(the own-loop head, the train state, the experiments) can depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

__all__ = ["BN1_UPDATES", "HDML_LOSSES", "HDMLConfig", "OptimizerConfig"]

#: The losses HDML synthesises for (``loss=`` with ``hdml=True``; one form each in :data:`hdml_jax.head.HDML_FORMS`).
HDML_LOSSES = ("npair", "triplet", "contrastive", "multi_similarity")
#: Which passes update BN1's moving statistics (:class:`HDMLConfig`'s ``bn1_update``).
BN1_UPDATES = ("both", "real")


@dataclasses.dataclass(frozen=True)
class HDMLConfig:
  """Static hyper-parameters of the train step (reference defaults).

  Attributes:
    loss: the metric loss, any name of :data:`hdml_jax.losses.LOSS_NAMES`
      (checked where the state and the step are built):
      the reference's ``"npair"`` (batches ``[anchors; positives]``),
      ``"triplet"`` or ``"contrastive"`` (batches ``[anchors; positives;
      negatives]``; the contrastive pairs are (a, p) similar and (a, n)
      dissimilar), or a label-based or proxy loss on M-per-class batches
      (``"multi_similarity"``, ``"proxy_anchor"``, ...). HDML synthesises
      for the names of :data:`HDML_LOSSES` (Multi-Similarity is an extension
      beyond the reference: synthesis by
      :func:`hdml_jax.hardness.expand_label_tuples`).
    hdml: hardness-aware synthesis on (the loss must be one of
      :data:`HDML_LOSSES`); off is the plain baseline (one Adam on ``J_m``,
      no generator, no classifier), for every loss.
    alpha: hardness temperature in ``exp(-alpha/J_avg)`` (reference 90).
    beta: ``w = exp(-beta/J_gen)`` (reference 1e4 for Cars196, 5e3 CUB).
    lam: the ``lambda`` of ``J_recon`` and ``J_soft`` (reference 0.5).
    softmax_factor: scale of ``J_soft`` (reference 1e4).
    l2_reg: N-pair embedding-norm penalty (reference 3e-3 for Cars196).
    weight_decay: ``wd`` of the ``wd * sum|w|^2 / 2`` term inside ``J_m``
      over the backbone and fc1 kernels and biases (reference 5e-3 Cars196),
      whatever the loss.
    margin: the triplet margin (reference 1, squared distances, summed).
    contrastive_margin: the contrastive margin (mean over pairs).
    bn1_update: ``"both"`` (reference): the real and then the synthetic pass
      through BN1 both update its moving statistics, in that order;
      ``"real"``: only the real pass does. Both passes normalise with their
      own batch statistics either way.
    alpha_relative: 0 (reference): ``alpha`` is used as given. ``> 0``
      (a deviation from the reference, for transfer across batch, feature
      and model sizes): ``alpha = alpha_relative * J_avg_first``, the mean
      of ``w J_m`` over the first completed statistics block, so the
      hardness factor is ``exp(-alpha_relative * J_avg_first / J_avg)``:
      ``exp(-alpha_relative)`` when the block closes, lower as the loss
      falls; 1 (no synthesis hardness) until then. ``alpha`` is ignored.
    beta_relative: 0 (reference): ``beta`` as given. ``> 0`` (a deviation):
      ``beta = beta_relative * J_gen_first``, so
      ``w = exp(-beta_relative * J_gen_first / J_gen)`` starts at
      ``exp(-beta_relative)`` and falls as ``J_gen`` falls, whatever the
      batch and feature sizes that set ``J_gen``'s scale; ``w = 1`` until
      the first block completes. ``beta`` is ignored.
  """

  loss: str = "npair"
  hdml: bool = True
  alpha: float = 90.0
  beta: float = 1e4
  lam: float = 0.5
  softmax_factor: float = 1e4
  l2_reg: float = 3e-3
  weight_decay: float = 5e-3
  margin: float = 1.0
  contrastive_margin: float = 1.0
  bn1_update: str = "both"
  alpha_relative: float = 0.0
  beta_relative: float = 0.0

  def __post_init__(self):
    if not isinstance(self.loss, str):
      raise ValueError(f"HDMLConfig.loss must be a loss's name, got {self.loss!r}.")
    if self.hdml and self.loss not in HDML_LOSSES:
      raise ValueError(f"HDMLConfig: HDML has no synthesis for loss {self.loss!r} (it has one for "
                       f"{', '.join(HDML_LOSSES)}); set hdml=False to train it without synthesis.")
    if self.bn1_update not in BN1_UPDATES:
      raise ValueError(f"HDMLConfig.bn1_update must be one of {BN1_UPDATES}, got {self.bn1_update!r}.")
    if not 0.0 <= self.lam <= 1.0:
      raise ValueError(f"HDMLConfig.lam must lie in [0, 1], got {self.lam}.")
    for name in ("alpha", "beta", "alpha_relative", "beta_relative", "softmax_factor", "l2_reg", "weight_decay", "margin", "contrastive_margin"):
      if getattr(self, name) < 0:
        raise ValueError(f"HDMLConfig.{name} must be >= 0, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adam optimizers over disjoint parameter groups (three for HDML, a fourth for a loss's own parameters).

  Attributes:
    metric_lr: backbone + BN1 + fc1, trained on ``J_metric`` (``J_m`` for the
      baseline). Reference 7e-5.
    metric_boundaries, metric_decay: the metric learning rate is multiplied
      by ``metric_decay`` at each boundary step (reference: x0.5 at 5632 and
      6848).
    generator_lr: the generator, trained on ``J_gen`` (reference 1e-2).
    classifier_lr: the classifier, trained on ``J_cls`` (reference 1e-3).
    generator_boundaries, classifier_boundaries, generator_decay,
      classifier_decay: the same step schedule for the other two groups
      (constant in the reference).
    clip_value: if set, metric gradients are clipped element-wise to
      ``[-clip_value, clip_value]`` (the reference's SOP runs used 2).
    loss_lr, loss_boundaries, loss_decay: the parameters a library loss owns
      (the proxies of a proxy loss; :mod:`hdml_jax.train_step`), with their
      own Adam. 1e-2 is 100x the
      backbone's order of magnitude, as Proxy-Anchor's paper trains its
      proxies; unused by HDML and the reference's losses.

  :func:`hdml_jax.optimizers.make_optimizer` builds the optimizer from it.
  """

  metric_lr: float = 7e-5
  metric_boundaries: Sequence[int] = (5632, 6848)
  metric_decay: float = 0.5
  generator_lr: float = 1e-2
  classifier_lr: float = 1e-3
  generator_boundaries: Sequence[int] = ()
  generator_decay: float = 0.5
  classifier_boundaries: Sequence[int] = ()
  classifier_decay: float = 0.5
  clip_value: float | None = None
  loss_lr: float = 1e-2
  loss_boundaries: Sequence[int] = ()
  loss_decay: float = 0.5

  def __post_init__(self):
    for group in ("metric", "generator", "classifier", "loss"):
      name = f"{group}_boundaries"
      object.__setattr__(self, name, tuple(int(b) for b in getattr(self, name)))
      if getattr(self, f"{group}_lr") < 0:
        raise ValueError(f"OptimizerConfig.{group}_lr must be >= 0, got {getattr(self, group + '_lr')}.")
