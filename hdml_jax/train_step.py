"""The HDML train step: ``(state, batch, rng) -> (state, metrics)``.

One pure function, jit-compiled once, for HDML with N-pair, triplet or
contrastive losses and for the plain baseline. Three gradients are taken at
the same parameter values, each from its own loss:

* ``J_metric = w J_m + (1 - w) J_syn`` -> backbone + BN1 + fc1; its gradient
  flows through the synthesis, the generator and the shared re-encoder (the
  generator's parameters are constants there);
* ``J_gen = J_recon + J_soft`` -> the generator only;
* ``J_cls`` (the classifier on the real features) -> the classifier only.

Batches are dicts ``{"images": [B, ...], "labels": [B]}`` laid out
``[anchors; positives]`` (N-pair, ``B = 2P``) or
``[anchors; positives; negatives]`` (triplet, contrastive; ``B = 3T``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hdml_jax import hardness, losses, objective
from hdml_jax.distances import safe_sqrt
from hdml_jax.statistics import AdaptiveStatistics, update_statistics
from hdml_jax.train_state import HDMLConfig, HDMLTrainState, Networks

Batch = dict[str, jax.Array]
StepFn = Callable[[HDMLTrainState, Batch, jax.Array], tuple[HDMLTrainState, dict]]


def _check_batch(config: HDMLConfig, images, labels) -> int:
  """Returns P (N-pair) or T (triplet) after trace-time layout checks."""
  b = images.shape[0]
  if tuple(labels.shape) != (b,):
    raise ValueError(
        f"train_step: labels must have shape ({b},) for images {tuple(images.shape)}, "
        f"got {tuple(labels.shape)}."
    )
  if config.loss == "npair":
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


def _contrastive(config, a, p, n):
  x2 = jnp.concatenate([p, n])
  same = jnp.concatenate([jnp.ones(a.shape[0]), jnp.zeros(a.shape[0])])
  return losses.contrastive_loss(jnp.concatenate([a, a]), x2, same, margin=config.contrastive_margin)


def real_metric_loss(config: HDMLConfig, z: jax.Array, labels: jax.Array) -> jax.Array:
  """The metric loss on real embeddings (``J_m`` without weight decay)."""
  if config.loss == "npair":
    p = z.shape[0] // 2
    return losses.npair_loss(z[:p], z[p:], labels=labels[:p], l2_reg=config.l2_reg)
  a, p, n = losses.split_triplets(z)
  if config.loss == "triplet":
    return losses.triplet_loss(a, p, n, margin=config.margin)
  return _contrastive(config, a, p, n)


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


def synthetic_inputs(config: HDMLConfig, z: jax.Array, j_avg: jax.Array,
                     alpha: jax.Array | float | None = None) -> jax.Array:
  """The synthetic rows of the generator input.

  N-pair: ``[P + P^2, E]`` (anchors, then each anchor's P hardness-augmented
  candidates); triplet/contrastive: ``[3T, E]`` = ``[a; p; n^]``. ``alpha``
  defaults to ``config.alpha`` (see :func:`effective_alpha`).
  """
  alpha = config.alpha if alpha is None else alpha
  if config.loss == "npair":
    p = z.shape[0] // 2
    return hardness.expand_npair_tuples(z[:p], z[p:], alpha=alpha, j_avg=j_avg).flat()
  a, p, n = losses.split_triplets(z)
  n_hat = hardness.synthesize_negatives(a, p, n, alpha=alpha, j_avg=j_avg)
  return jnp.concatenate([a, p, n_hat])


def synthetic_metric_loss(config: HDMLConfig, z_syn: jax.Array, num: int) -> jax.Array:
  """``J_syn`` on the re-encoded synthetic rows."""
  if config.loss == "npair":
    syn = hardness.NPairTuples(z_syn[:num], z_syn[num:].reshape(num, num, -1))
    return losses.synthetic_npair_loss(syn.anchors, syn.candidates, l2_reg=config.l2_reg)
  a, p, n = losses.split_triplets(z_syn)
  if config.loss == "triplet":
    return losses.triplet_loss(a, p, n, margin=config.margin)
  return _contrastive(config, a, p, n)


def soft_loss(config: HDMLConfig, logits_syn: jax.Array, labels: jax.Array, num: int) -> jax.Array:
  """``J_soft`` with the N-pair or the triplet label rule."""
  if config.loss == "npair":
    return objective.soft_loss_npair(
        logits_syn[:num], logits_syn[num:], labels[:num],
        lam=config.lam, softmax_factor=config.softmax_factor)
  return objective.soft_loss_triplet(
      logits_syn, labels, lam=config.lam, softmax_factor=config.softmax_factor)


def _metric_weight_decay(config: HDMLConfig, metric_params) -> jax.Array:
  # The reference decays the backbone and fc1, not BN1.
  covered = {"backbone": metric_params["backbone"], "fc1": metric_params["embedding"]["fc1"]}
  return objective.weight_decay(covered, wd=config.weight_decay)


def make_train_step(
    networks: Networks, config: HDMLConfig, *, axis_name: str | None = None
) -> StepFn:
  """Builds the pure train step for ``networks`` and ``config``.

  Args:
    networks: the modules (``state.networks``).
    config: static hyper-parameters (``state.config``).
    axis_name: set when the step runs under ``jax.pmap``: gradients, the
      BatchNorm moving statistics and the loss values fed to the adaptive
      statistics are averaged over that axis. Under pmap the tuples
      (N-pair pairs, triplets, the P^2 synthetic candidates) are formed per
      device from the device's own sub-batch, and BatchNorm normalises with
      per-device batch statistics. Leave it None under ``jax.jit``: there the
      step sees the global batch whatever the device count.

  Returns:
    ``step(state, batch, rng) -> (state, metrics)``. ``metrics`` holds every
    loss term, ``w``, ``hardness`` = ``exp(-alpha/J_avg)``, the statistics
    read this step (``stat/j_avg``, ``stat/j_gen``), per-group gradient norms
    and ``finite`` (all losses finite). A non-finite loss is never replaced:
    the caller stops on ``finite == False``.
  """
  if config.hdml and (networks.generator is None or networks.classifier is None):
    raise ValueError("make_train_step: HDML needs networks built with hdml=True.")

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def step(state: HDMLTrainState, batch: Batch, rng: jax.Array):
    del rng  # No stochastic layer; kept so every step has one signature.
    images, labels = batch["images"], batch["labels"]
    num = _check_batch(config, images, labels)
    params, bstats, stats = state.params, state.batch_stats, state.stats
    alpha, beta = effective_alpha(config, stats), effective_beta(config, stats)

    def encode(mp, emb_stats, x):
      y, bb_new = networks.backbone.apply(
          {"params": mp["backbone"], "batch_stats": bstats["backbone"]}, x,
          train=True, mutable=["batch_stats"])
      z, emb_new = networks.embedding.apply(
          {"params": mp["embedding"], "batch_stats": emb_stats}, y,
          train=True, mutable=["batch_stats"])
      return y, z, bb_new.get("batch_stats", {}), emb_new["batch_stats"]

    def metric_fn(mp):
      y, z, bb_stats, emb_stats = encode(mp, bstats["embedding"], images)
      wd = _metric_weight_decay(config, mp)
      j_m = real_metric_loss(config, z, labels) + wd
      aux = {"features": y, "z": z, "j_m": j_m, "weight_decay": wd, "bb_stats": bb_stats}
      if not config.hdml:
        aux["emb_stats"] = emb_stats
        return j_m, aux
      syn_in = synthetic_inputs(config, z, stats.j_avg, alpha)
      gen_in = jnp.concatenate([z, syn_in])
      gen_out = networks.generator.apply(
          {"params": params["generator"], "batch_stats": bstats["generator"]}, gen_in,
          train=True, mutable=["batch_stats"])[0]
      y_syn = gen_out[z.shape[0]:]
      second_in = emb_stats if config.bn1_update == "both" else bstats["embedding"]
      z_syn, emb_syn = networks.embedding.apply(
          {"params": mp["embedding"], "batch_stats": second_in}, y_syn,
          train=True, mutable=["batch_stats"])
      j_syn = synthetic_metric_loss(config, z_syn, num)
      w = objective.metric_weight(stats.j_gen, beta=beta)
      aux.update(
          gen_input=gen_in, j_syn=j_syn, w=w,
          emb_stats=emb_syn["batch_stats"] if config.bn1_update == "both" else emb_stats)
      return objective.metric_objective(j_m, j_syn, w), aux

    metric_params = {"backbone": params["backbone"], "embedding": params["embedding"]}
    (j_metric, aux), g_metric = jax.value_and_grad(metric_fn, has_aux=True)(metric_params)
    grads = dict(g_metric)
    new_bstats = {"backbone": aux["bb_stats"], "embedding": aux["emb_stats"]}
    metrics = {"loss": j_metric, "j_m": aux["j_m"],
               "weight_decay": aux["weight_decay"]}
    losses_ok = [j_metric]

    if config.hdml:
      y = jax.lax.stop_gradient(aux["features"])
      gen_in = jax.lax.stop_gradient(aux["gen_input"])
      batch_size = images.shape[0]

      def gen_fn(gp):
        out, new = networks.generator.apply(
            {"params": gp, "batch_stats": bstats["generator"]}, gen_in,
            train=True, mutable=["batch_stats"])
        j_recon = objective.reconstruction_loss(out[:batch_size], y, lam=config.lam)
        logits_syn = networks.classifier.apply({"params": params["classifier"]}, out[batch_size:])
        j_soft = soft_loss(config, logits_syn, labels, num)
        return j_recon + j_soft, (j_recon, j_soft, new["batch_stats"])

      (j_gen, (j_recon, j_soft, gen_stats)), g_gen = jax.value_and_grad(gen_fn, has_aux=True)(
          params["generator"])

      def cls_fn(cp):
        return objective.classifier_loss(networks.classifier.apply({"params": cp}, y), labels)

      j_cls, g_cls = jax.value_and_grad(cls_fn)(params["classifier"])
      grads["generator"], grads["classifier"] = g_gen, g_cls
      new_bstats["generator"] = gen_stats
      metrics.update(
          j_syn=aux["j_syn"], j_metric=j_metric, j_recon=j_recon, j_soft=j_soft,
          j_gen=j_gen, j_cls=j_cls, w=aux["w"],
          hardness=hardness.hardness_factor(stats.j_avg, alpha=alpha),
          alpha=jnp.asarray(alpha, jnp.float32), beta=jnp.asarray(beta, jnp.float32))
      losses_ok += [j_gen, j_cls]

    grads = pmean(grads)
    new_bstats = pmean(new_bstats)
    metrics = pmean(metrics)
    new_stats = stats
    if config.hdml:
      new_stats = update_statistics(stats, metrics["w"] * metrics["j_m"], metrics["j_gen"])
    metrics["stat/j_avg"] = stats.j_avg
    metrics["stat/j_gen"] = stats.j_gen
    for key, g in grads.items():
      metrics[f"grad_norm/{key}"] = optax.tree.norm(g)
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack([metrics["loss"]] + (
        [metrics["j_gen"], metrics["j_cls"]] if config.hdml else []))))
    new_state = state.apply_gradients(grads=grads).replace(batch_stats=new_bstats, stats=new_stats)
    return new_state, metrics

  return step


def make_embed_fn(networks: Networks, *, normalize: bool = True):
  """Jitted inference embedding ``(params, batch_stats, images) -> [B, E]``.

  BatchNorm runs in inference mode; the output is L2-normalised unless
  ``normalize=False``.
  """

  @jax.jit
  def embed(params, batch_stats, images):
    y = networks.backbone.apply(
        {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}, images, train=False)
    z = networks.embedding.apply(
        {"params": params["embedding"], "batch_stats": batch_stats["embedding"]}, y, train=False)
    if normalize:
      z = z / jnp.maximum(safe_sqrt(jnp.sum(jnp.square(z), axis=1, keepdims=True)), 1e-12)
    return z

  return embed


def embed_in_batches(state: HDMLTrainState, images, *, batch_size: int = 256) -> np.ndarray:
  """Embeds a host array of images in fixed-size batches (one compilation).

  The last batch is padded to ``batch_size`` and the padding dropped.
  """
  images = np.asarray(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError("embed_in_batches: no images to embed.")
  out = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(state.apply_fn(state.params, state.batch_stats, chunk))[:batch_size - pad])
  return np.concatenate(out)
