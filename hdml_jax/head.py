"""HDML as a pure objective over backbone features: for your own training loop.

Everything HDML adds on top of a backbone — the embedding head (BN1 + fc1),
the hardness-aware synthesis, the generator, the re-encoding, the classifier
and every loss term — as one pure function of the backbone's pooled features
``y``. A loop with its own model, state and optimizers uses it like this::

    head, head_params, head_stats = init_hdml_head(rng, feature_dim=F, embedding_dim=E,
                                                   num_classes=C, config=HDMLConfig(loss="npair"))
    stats = init_statistics(block_length=64)

    def total(params):                  # params = {"backbone": ..., **head_params}
      y = my_backbone.apply(params["backbone"], images)
      head_params = {k: v for k, v in params.items() if k != "backbone"}
      return hdml_objective(head, head_params, head_stats, y, labels, stats,
                            decay_params=params["backbone"])

    (loss, out), grads = jax.value_and_grad(total, has_aux=True)(params)
    # grads["backbone"], grads["embedding"]: of J_metric; grads["generator"]: of J_gen;
    # grads["classifier"]: of J_cls -> give each group its own optimizer.
    head_stats, stats = out.batch_stats, update_statistics(stats, out.metrics["w"] * out.metrics["j_m"],
                                                           out.metrics["j_gen"])

The value returned is ``J_metric + J_gen + J_cls``, built so that each term
reaches only its own parameter group (stop-gradients on the generator's
parameters inside ``J_metric``, on the generator's inputs and the
classifier's parameters inside ``J_gen``, on the features inside ``J_cls``):
one ``jax.grad`` of the sum gives every group the gradient of its own loss,
at the same parameter values. :func:`hdml_jax.make_train_step` is built on it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from hdml_jax import hardness, losses, objective
from hdml_jax.config import HDML_LOSSES, HDMLConfig
from hdml_jax.distances import l2_normalize
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from hdml_jax.networks import HDMLHead, build_head, init_head_variables
from hdml_jax.statistics import AdaptiveStatistics

__all__ = [
    "HDML_FORMS",
    "HDMLForm",
    "HDMLOutput",
    "check_batch",
    "effective_alpha",
    "effective_beta",
    "hdml_objective",
    "init_hdml_head",
    "metric_loss_spec",
    "real_metric_loss",
    "soft_loss",
    "synthetic_inputs",
    "synthetic_metric_loss",
]


def _layout(config: HDMLConfig) -> str:
  return losses.loss_spec(config.loss).layout


def check_batch(config: HDMLConfig, images, labels) -> int:
  """Returns the tuple count after trace-time checks of the batch layout ``config.loss`` expects.

  ``images`` are images or features (only the leading axis is read). The
  layout is the loss's (:data:`hdml_jax.losses.LAYOUTS`): ``[anchors;
  positives]`` (an even size >= 4; returns P), ``[anchors; positives;
  negatives]`` (a size divisible by 3; returns T), classes repeated (at least
  2 rows) or any batch (returns B); ``labels`` must be ``[B]``. Raises
  ``ValueError`` naming the shapes.
  """
  b = images.shape[0]
  if tuple(labels.shape) != (b,):
    raise ValueError(
        f"train_step: labels must have shape ({b},) for images {tuple(images.shape)}, "
        f"got {tuple(labels.shape)}."
    )
  layout = _layout(config)
  if layout in ("classes", "any"):
    least = 2 if layout == "classes" else 1
    if b < least:
      raise ValueError(f"train_step: a {config.loss} batch needs at least {least} samples, got images "
                       f"{tuple(images.shape)}.")
    return b
  if layout == "pairs":
    if b % 2 or b < 4:
      raise ValueError(
          f"train_step: an N-pair batch [anchors; positives] needs an even size >= 4, "
          f"got images {tuple(images.shape)}."
      )
    return b // 2
  if b % 3:
    raise ValueError(
        f"train_step: a {config.loss} batch [anchors; positives; negatives] needs a size "
        f"divisible by 3, got images {tuple(images.shape)}."
    )
  return b // 3


# The reference tuple losses' hyper-parameters are HDMLConfig fields (HDML's synthetic loss shares them):
# loss name -> {hyper-parameter: HDMLConfig field}.
_CONFIG_HYPER = {"npair": {"l2_reg": "l2_reg"}, "triplet": {"margin": "margin"},
                 "contrastive": {"margin": "contrastive_margin"}}


def metric_loss_spec(config: HDMLConfig, hyper: dict | None = None) -> losses.LossSpec:
  """The registered loss ``config.loss`` (:func:`hdml_jax.losses.loss_spec`) with its hyper-parameters.

  A reference tuple loss reads them from ``config`` (``l2_reg``, ``margin``,
  ``contrastive_margin``), so ``hyper`` must be empty for it; any other loss
  takes ``hyper`` (a subset of :func:`hdml_jax.losses.hyper_parameters`).
  """
  if config.loss in _CONFIG_HYPER:
    if hyper:
      fields = ", ".join(f"{k} (HDMLConfig.{v})" for k, v in _CONFIG_HYPER[config.loss].items())
      raise ValueError(f"loss {config.loss!r} takes its hyper-parameters from the HDML config: {fields}; "
                       f"got {dict(hyper)}.")
    return losses.loss_spec(config.loss, {k: getattr(config, v) for k, v in _CONFIG_HYPER[config.loss].items()})
  return losses.loss_spec(config.loss, hyper)


def real_metric_loss(config: HDMLConfig, z: jax.Array, labels: jax.Array, *, loss_params: dict | None = None,
                     rng: jax.Array | None = None, hyper: dict | None = None) -> jax.Array:
  """The metric loss on real embeddings (``J_m`` without weight decay): the registered loss ``config.loss``.

  ``loss_params`` are the loss's own parameters (a proxy loss's
  ``{"proxies"}``), ``rng`` the key of a loss that samples (``margin``),
  ``hyper`` as for :func:`metric_loss_spec`.
  """
  return metric_loss_spec(config, hyper).fn(loss_params or {}, z, labels, rng)


def _npair_rows(config, z, labels, alpha, j_avg):
  p = z.shape[0] // 2
  return hardness.expand_npair_tuples(z[:p], z[p:], alpha=alpha, j_avg=j_avg).flat()


def _label_rows(config, z, labels, alpha, j_avg):
  if labels is None:
    raise ValueError(f"synthetic_inputs: the {config.loss} synthesis needs the batch labels.")
  return hardness.expand_label_tuples(z, labels, alpha=alpha, j_avg=j_avg).flat()


def _triplet_rows(config, z, labels, alpha, j_avg):
  a, p, n = losses.split_triplets(z)
  return jnp.concatenate([a, p, hardness.synthesize_negatives(a, p, n, alpha=alpha, j_avg=j_avg)])


def _npair_syn_loss(config, z_syn, num, labels, hyper):
  syn = hardness.NPairTuples(z_syn[:num], z_syn[num:].reshape(num, num, -1))
  return losses.synthetic_npair_loss(syn.anchors, syn.candidates, l2_reg=config.l2_reg)


def _triplet_syn_loss(config, z_syn, num, labels, hyper):
  return losses.triplet_loss(*losses.split_triplets(z_syn), margin=config.margin)


def _contrastive_syn_loss(config, z_syn, num, labels, hyper):
  return losses.contrastive_triplet_loss(*losses.split_triplets(z_syn), margin=config.contrastive_margin)


def _multi_similarity_syn_loss(config, z_syn, num, labels, hyper):
  if labels is None:
    raise ValueError(f"synthetic_metric_loss: the {config.loss} loss needs the batch labels.")
  syn = hardness.NPairTuples(z_syn[:num], z_syn[num:].reshape(num, num, -1))
  s = jnp.einsum("ie,ije->ij", l2_normalize(syn.anchors), l2_normalize(syn.candidates))
  same = labels[:, None] == labels[None, :]
  return losses.multi_similarity_from_similarities(s, same & ~jnp.eye(num, dtype=bool), ~same, **(hyper or {}))


def _npair_soft(config, logits_syn, labels, num):
  return objective.soft_loss_npair(logits_syn[:num], logits_syn[num:], labels[:num], lam=config.lam,
                                   softmax_factor=config.softmax_factor)


def _triplet_soft(config, logits_syn, labels, num):
  return objective.soft_loss_triplet(logits_syn, labels, lam=config.lam, softmax_factor=config.softmax_factor)


class HDMLForm(NamedTuple):
  """How HDML synthesises for one loss: a row of :data:`HDML_FORMS`.

  The batch layout, the real loss and the sampler are the registered
  loss's (:func:`hdml_jax.losses.loss_spec`, its ``layout``;
  :func:`hdml_jax.data.make_sampler`); a form adds the rest.

  Attributes:
    synthetic_tuples: ``(config, z, labels, alpha, j_avg) -> [S, E]``, the
      generator's synthetic input rows (what :func:`synthetic_inputs` returns).
    synthetic_loss: ``(config, z_syn, num, labels, hyper) -> J_syn`` on the
      re-encoded synthetic rows.
    soft_rule: ``(config, logits_syn, labels, num) -> J_soft``, the label
      each decoded row must keep.
  """

  synthetic_tuples: Callable
  synthetic_loss: Callable
  soft_rule: Callable


#: HDML's forms, one per loss it synthesises for (:data:`hdml_jax.config.HDML_LOSSES`):
#:
#: ================  ==========  ================================  ==============================  ===========  ===============
#: loss              layout      synthetic tuples                  synthetic loss                  soft rule    sampler
#: ================  ==========  ================================  ==============================  ===========  ===============
#: npair             pairs       anchors + each anchor's P         per-anchor N-pair               N-pair       NPairSampler
#:                               hardness-augmented candidates
#: triplet           triplets    ``[a; p; n^]``                    triplet                         triplet      TripletSampler
#: contrastive       triplets    ``[a; p; n^]``                    contrastive (a, p), (a, n^)     triplet      TripletSampler
#: multi_similarity  classes     every row + its B candidates      Multi-Similarity per anchor     N-pair       MPerClassSampler
#: ================  ==========  ================================  ==============================  ===========  ===============
HDML_FORMS = {
    "npair": HDMLForm(_npair_rows, _npair_syn_loss, _npair_soft),
    "triplet": HDMLForm(_triplet_rows, _triplet_syn_loss, _triplet_soft),
    "contrastive": HDMLForm(_triplet_rows, _contrastive_syn_loss, _triplet_soft),
    "multi_similarity": HDMLForm(_label_rows, _multi_similarity_syn_loss, _npair_soft),
}
assert tuple(HDML_FORMS) == HDML_LOSSES, "one HDML form per name of hdml_jax.config.HDML_LOSSES"


def effective_alpha(config: HDMLConfig, stats: AdaptiveStatistics) -> jax.Array | float:
  """``alpha``, or ``alpha_relative * J_avg_first`` when set (0 before the first block: factor 1)."""
  if config.alpha_relative > 0:
    return config.alpha_relative * stats.j_avg_first
  return config.alpha


def effective_beta(config: HDMLConfig, stats: AdaptiveStatistics) -> jax.Array | float:
  """``beta``, or ``beta_relative * J_gen_first`` when set (0 before the first block: ``w = 1``)."""
  if config.beta_relative > 0:
    return config.beta_relative * stats.j_gen_first
  return config.beta


def _form(config: HDMLConfig, where: str) -> HDMLForm:
  if config.loss not in HDML_FORMS:
    raise ValueError(f"{where}: HDML has no synthesis for loss {config.loss!r}; it has one for "
                     f"{', '.join(HDML_FORMS)}.")
  return HDML_FORMS[config.loss]


def synthetic_inputs(config: HDMLConfig, z: jax.Array, j_avg: jax.Array,
                     alpha: jax.Array | float | None = None, labels: jax.Array | None = None) -> jax.Array:
  """The synthetic rows of the generator input (the form's ``synthetic_tuples``).

  N-pair: ``[P + P^2, E]`` (anchors, then each anchor's P hardness-augmented
  candidates); Multi-Similarity: ``[B + B^2, E]`` the same way over every
  row (:func:`hdml_jax.hardness.expand_label_tuples`, which needs
  ``labels``); triplet/contrastive: ``[3T, E]`` = ``[a; p; n^]``. ``alpha``
  defaults to ``config.alpha`` (see :func:`effective_alpha`).
  """
  alpha = config.alpha if alpha is None else alpha
  return _form(config, "synthetic_inputs").synthetic_tuples(config, z, labels, alpha, j_avg)


def synthetic_metric_loss(config: HDMLConfig, z_syn: jax.Array, num: int,
                          labels: jax.Array | None = None, *, hyper: dict | None = None) -> jax.Array:
  """``J_syn`` on the re-encoded synthetic rows (Multi-Similarity also needs the batch ``labels``).

  Multi-Similarity: anchor ``i`` against its own candidates ``(i, j)``
  (cosine similarities), with the pair masks of the real batch and the
  loss's ``hyper``-parameters.
  """
  return _form(config, "synthetic_metric_loss").synthetic_loss(config, z_syn, num, labels, hyper)


def soft_loss(config: HDMLConfig, logits_syn: jax.Array, labels: jax.Array, num: int) -> jax.Array:
  """``J_soft`` with the N-pair (also Multi-Similarity's: candidate ``(i, j)`` keeps ``j``'s label) or triplet rule."""
  return _form(config, "soft_loss").soft_rule(config, logits_syn, labels, num)


class HDMLOutput(NamedTuple):
  """What :func:`hdml_objective` returns besides the loss.

  Attributes:
    batch_stats: the head's new BatchNorm statistics (``embedding``, and
      ``generator`` with HDML).
    metrics: ``loss`` (= ``J_metric``), ``j_m``, ``weight_decay`` and, with
      HDML, ``j_syn``, ``j_metric``, ``j_recon``, ``j_soft``, ``j_gen``,
      ``j_cls``, ``w``, ``hardness``, ``alpha``, ``beta``.
    extra: what ``extra_loss`` returned beside its value (None without it).
  """

  batch_stats: Any
  metrics: dict
  extra: Any = None


def init_hdml_head(
    rng: jax.Array,
    *,
    feature_dim: int,
    embedding_dim: int,
    num_classes: int,
    config: HDMLConfig = HDMLConfig(),
    generator_hidden: int = 512,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
) -> tuple[HDMLHead, dict, dict]:
  """The head's modules, parameters and BatchNorm statistics.

  Returns ``(head, params, batch_stats)`` with ``params`` keyed
  ``embedding`` (BN1 + fc1), and with ``config.hdml`` also ``generator`` and
  ``classifier``; ``batch_stats`` keyed ``embedding`` (and ``generator``).
  The modules and variables are built as :func:`hdml_jax.create_train_state`
  builds its head (:func:`hdml_jax.networks.build_head` and
  :func:`hdml_jax.networks.init_head_variables`); the three keys are split
  from ``rng``.
  """
  if num_classes < 2:
    raise ValueError(f"init_hdml_head: need at least 2 classes, got {num_classes}.")
  head = build_head(feature_dim=feature_dim, embedding_dim=embedding_dim, num_classes=num_classes, config=config,
                    generator_hidden=generator_hidden, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
  params, batch_stats = init_head_variables(head, jax.random.split(rng, 3), feature_dim=feature_dim)
  return head, params, batch_stats


def hdml_objective(
    head: HDMLHead,
    params: dict,
    batch_stats: dict,
    features: jax.Array,
    labels: jax.Array,
    stats: AdaptiveStatistics,
    *,
    decay_params: Any = None,
    rng: jax.Array | None = None,
    hyper: dict | None = None,
    extra_loss: Callable | None = None,
) -> tuple[jax.Array, HDMLOutput]:
  """``J_metric + J_gen + J_cls`` of one batch, each term reaching only its own group.

  Args:
    head: from :func:`init_hdml_head` (or a train state's networks).
    params: ``{"embedding", "generator", "classifier"}`` (the last two with
      HDML), and ``"loss"``: the parameters the loss owns (a proxy loss's
      proxies), if any.
    batch_stats: ``{"embedding", "generator"}``.
    features: ``[B, F]`` backbone features of a batch in the layout of
      ``config.loss`` (:func:`check_batch`): ``[anchors; positives]``
      (N-pair, ``B = 2P``), ``[anchors; positives; negatives]``
      (triplet/contrastive, ``B = 3T``), classes repeated, or any batch (a
      proxy loss). Gradients of ``J_metric`` flow back into them (and so
      into the caller's backbone).
    labels: ``[B]`` integer classes.
    stats: the adaptive statistics (``J_avg``, ``J_gen``); read, not updated
      (update them with ``w * J_m`` and ``J_gen`` from the metrics).
    decay_params: parameters whose ``wd * |w|^2 / 2`` joins ``J_m`` beside
      fc1's (the reference decays the backbone: pass its parameters).
    rng: the key of a loss that samples (``margin``); unused by the others.
    hyper: the loss's hyper-parameters (:func:`metric_loss_spec`).
    extra_loss: ``(z, labels) -> (value, aux)``, a term added to the real
      loss inside ``J_m`` (the train step's cross-batch memory); ``aux``
      comes back as ``HDMLOutput.extra``.

  Returns:
    ``(J_metric + J_gen + J_cls, HDMLOutput)``; for the baseline
    (``config.hdml`` off) the value is ``J_m``.
  """
  config = head.config
  sg = jax.lax.stop_gradient
  num = check_batch(config, features, labels)
  alpha, beta = effective_alpha(config, stats), effective_beta(config, stats)
  decay = None   # wd = 0: no term at all (not a zero times the weights), so the program is the loss's alone
  if config.weight_decay:
    decay = objective.weight_decay({"backbone": decay_params if decay_params is not None else {},
                                    "fc1": params["embedding"]["fc1"]}, wd=config.weight_decay)
  z, emb_new = head.embedding.apply({"params": params["embedding"], "batch_stats": batch_stats["embedding"]},
                                    features, train=True, mutable=["batch_stats"])
  emb_stats = emb_new["batch_stats"]
  real, extra = real_metric_loss(config, z, labels, loss_params=params.get("loss"), rng=rng, hyper=hyper), None
  if extra_loss is not None:
    value, extra = extra_loss(z, labels)
    real = real + value
  j_m = real if decay is None else real + decay
  metrics = {"loss": j_m, "j_m": j_m, "weight_decay": jnp.zeros((), jnp.float32) if decay is None else decay}
  if not config.hdml:
    return j_m, HDMLOutput({"embedding": emb_stats}, metrics, extra)

  # J_metric: through the synthesis, the generator (its parameters constant) and the re-encoder.
  gen_in = jnp.concatenate([z, synthetic_inputs(config, z, stats.j_avg, alpha, labels)])
  decoded = head.generator.apply({"params": sg(params["generator"]), "batch_stats": batch_stats["generator"]},
                                 gen_in, train=True, mutable=["batch_stats"])[0]
  second_in = emb_stats if config.bn1_update == "both" else batch_stats["embedding"]
  z_syn, emb_syn = head.embedding.apply({"params": params["embedding"], "batch_stats": second_in},
                                        decoded[z.shape[0]:], train=True, mutable=["batch_stats"])
  j_syn = synthetic_metric_loss(config, z_syn, num, labels, hyper=hyper)
  w = objective.metric_weight(stats.j_gen, beta=beta)
  j_metric = objective.metric_objective(j_m, j_syn, w)

  # J_gen: the generator alone, on the same inputs (the classifier's parameters constant).
  y = sg(features)
  out, gen_new = head.generator.apply({"params": params["generator"], "batch_stats": batch_stats["generator"]},
                                      sg(gen_in), train=True, mutable=["batch_stats"])
  j_recon = objective.reconstruction_loss(out[:features.shape[0]], y, lam=config.lam)
  logits_syn = head.classifier.apply({"params": sg(params["classifier"])}, out[features.shape[0]:])
  j_soft = soft_loss(config, logits_syn, labels, num)
  j_gen = j_recon + j_soft

  # J_cls: the classifier on the real features.
  j_cls = objective.classifier_loss(head.classifier.apply({"params": params["classifier"]}, y), labels)

  new_stats = {"embedding": emb_syn["batch_stats"] if config.bn1_update == "both" else emb_stats,
               "generator": gen_new["batch_stats"]}
  metrics.update(loss=j_metric, j_syn=j_syn, j_metric=j_metric, j_recon=j_recon, j_soft=j_soft, j_gen=j_gen,
                 j_cls=j_cls, w=w, hardness=hardness.hardness_factor(stats.j_avg, alpha=alpha),
                 alpha=jnp.asarray(alpha, jnp.float32), beta=jnp.asarray(beta, jnp.float32))
  return j_metric + j_gen + j_cls, HDMLOutput(new_stats, metrics, extra)
