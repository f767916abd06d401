"""HDML inside a training loop of your own: plain Flax + optax, no hdml_jax state classes.

    python -m experiments.examples.own_loop

Your backbone, your parameter tree, your optimizers; hdml_jax supplies the
head (BN1 + fc1, generator, classifier) and the objective. Trains HDML N-pair
on the digits (classes 0-4) and prints the losses.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hdml_jax import HDMLConfig, init_statistics, update_statistics
from hdml_jax.data import load_digits_split, make_sampler
from hdml_jax.head import hdml_objective, init_hdml_head

CONFIG = HDMLConfig(loss="npair", beta=1e3, weight_decay=1e-3)
GROUP = {"backbone": "metric", "embedding": "metric", "generator": "generator", "classifier": "classifier"}


class Backbone(nn.Module):
  """Any model giving [B, F] features (``train`` only so that make_train_step can run it too)."""

  @nn.compact
  def __call__(self, images, train: bool = False):
    return nn.relu(nn.Dense(128)(images.reshape((images.shape[0], -1))))


def make_optimizer():
  # One Adam per group: J_metric trains backbone + embedding, J_gen the generator, J_cls the classifier.
  return optax.multi_transform(
      {"metric": optax.adam(3e-4), "generator": optax.adam(1e-3), "classifier": optax.adam(1e-3)},
      lambda params: {k: jax.tree_util.tree_map(lambda _: GROUP[k], v) for k, v in params.items()})


def init(rng, num_classes):
  k_backbone, k_head = jax.random.split(rng)
  backbone = Backbone()
  params = {"backbone": backbone.init(k_backbone, jnp.zeros((2, 8, 8, 1)))["params"]}
  head, head_params, head_stats = init_hdml_head(k_head, feature_dim=128, embedding_dim=16,
                                                 num_classes=num_classes, config=CONFIG, generator_hidden=128)
  params.update(head_params)
  return backbone, head, params, head_stats


def make_step(backbone, head, tx):
  @jax.jit
  def step(params, opt_state, head_stats, stats, batch):
    def total(p):
      features = backbone.apply({"params": p["backbone"]}, batch["images"])
      head_params = {k: v for k, v in p.items() if k != "backbone"}
      return hdml_objective(head, head_params, head_stats, features, batch["labels"], stats,
                            decay_params=p["backbone"])

    (_, out), grads = jax.value_and_grad(total, has_aux=True)(params)   # each group: its own loss
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    stats = update_statistics(stats, out.metrics["w"] * out.metrics["j_m"], out.metrics["j_gen"])
    return params, opt_state, out.batch_stats, stats, out.metrics

  return step


def main(num_steps: int = 300, seed: int = 0) -> list[dict]:
  images, labels = load_digits_split("train")
  sampler = make_sampler("npair", labels, batch_size=10, seed=seed)   # [anchors; positives], P = 5
  backbone, head, params, head_stats = init(jax.random.key(seed), num_classes=5)
  tx = make_optimizer()
  opt_state, stats = tx.init(params), init_statistics(block_length=16)
  step = make_step(backbone, head, tx)
  history = []
  for i in range(num_steps):
    idx = sampler(i)
    batch = {"images": jnp.asarray(images[idx]), "labels": jnp.asarray(labels[idx])}
    params, opt_state, head_stats, stats, metrics = step(params, opt_state, head_stats, stats, batch)
    history.append({k: float(v) for k, v in metrics.items()})
    if (i + 1) % 50 == 0 or i + 1 == num_steps:
      m = history[-1]
      print(f"step {i + 1}: J_metric {m['j_metric']:.3f}  J_m {m['j_m']:.3f}  J_gen {m['j_gen']:.1f}  "
            f"J_cls {m['j_cls']:.3f}  w {m['w']:.3f}")
  return history


if __name__ == "__main__":
  main()
