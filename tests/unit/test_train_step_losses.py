"""The train step over every registered loss without synthesis: every loss steps, owns its parameters, and bad
set-ups are refused."""

import jax
import numpy as np
import pytest

from hdml_jax import losses
from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.data import MPerClassSampler, load_digits_split
from hdml_jax.train_state import create_train_state
from hdml_jax.train_step import make_train_step


def _config(name):   # without the weight-decay term, so the loss is the registered loss alone
  return HDMLConfig(loss=name, hdml=False, weight_decay=0.0)


def _step(state, **kwargs):
  return make_train_step(state.networks, state.config, **kwargs)


def _state(name, num_classes=5, seed=0):
  params = losses.init_loss_params(name, jax.random.key(seed + 1), embedding_dim=6, num_classes=num_classes)
  return create_train_state(jax.random.key(seed), image_shape=(8, 8, 1), num_classes=num_classes, embedding_dim=6,
                            backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), generator_hidden=16,
                            config=_config(name), optimizer=OptimizerConfig(metric_lr=1e-3, loss_lr=1e-2),
                            stats_block_length=4, loss_params=params)


def _batch(step=0):
  images, labels = load_digits_split("train")
  idx = MPerClassSampler(labels, m=4, batch_size=20, seed=0)(step)
  return {"images": images[idx].reshape(-1, 8, 8, 1), "labels": labels[idx]}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in losses.LOSS_NAMES if n not in losses.TUPLE_LOSSES])
def test_every_loss_steps_with_finite_values_and_moves_its_parameters(name):
  state = _state(name)
  step = jax.jit(_step(state))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  for k in range(2):
    state, metrics = step(state, _batch(k), jax.random.key(k))
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"])), name
  moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert any(jax.tree_util.tree_leaves(moved["backbone"])) and any(jax.tree_util.tree_leaves(moved["embedding"]))
  if name in losses.PROXY_LOSSES:
    assert state.params["loss"]["proxies"].shape == (5, 6) and moved["loss"]["proxies"]
    assert "grad_norm/loss" in metrics
  else:
    assert state.params["loss"] == {}
  assert int(state.step) == 2


@pytest.mark.slow   # compiles a whole network or step
def test_the_loss_group_has_its_own_learning_rate():
  fast = _state("proxy_anchor")
  slow = create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                            backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), generator_hidden=16,
                            config=_config("proxy_anchor"), optimizer=OptimizerConfig(metric_lr=1e-3, loss_lr=0.0),
                            stats_block_length=4, loss_params=fast.params["loss"])
  step = _step(fast)
  fast2, _ = step(fast, _batch(), jax.random.key(0))
  slow2, _ = step(slow, _batch(), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(slow2.params["loss"]["proxies"]), np.asarray(slow.params["loss"]["proxies"]))
  assert not np.array_equal(np.asarray(fast2.params["loss"]["proxies"]), np.asarray(fast.params["loss"]["proxies"]))
  # The first step's gradients are the same (same proxies), so the metric group moves alike in both.
  for a, b in zip(jax.tree_util.tree_leaves(slow2.params["backbone"]), jax.tree_util.tree_leaves(fast2.params["backbone"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_set_ups_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"^unknown loss 'multisim'; choose one of npair, triplet, contrastive, npair_labels, .*arcface\.$"):
    losses.loss_spec("multisim")
  with pytest.raises(ValueError, match=r"^loss 'proxy_anchor' learns one proxy per training class: it needs num_classes >= 2"):
    losses.init_loss_params("proxy_anchor", jax.random.key(0), embedding_dim=4)
  with pytest.raises(ValueError, match="loss_params belong to a library loss"):
    create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                       backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), config=HDMLConfig(hdml=True),
                       loss_params={})
  state = _state("multi_similarity")
  with pytest.raises(ValueError, match=r"loss 'proxy_nca' needs params\['loss'\]\['proxies'\]"):
    make_train_step(state.networks, _config("proxy_nca"))(state, _batch(), jax.random.key(0))
  # A pair loss on a batch without repeated classes is refused by the loss itself (outside jit).
  images, labels = load_digits_split("train")
  one_each = np.array([np.flatnonzero(labels == c)[0] for c in range(5)])
  with pytest.raises(ValueError, match="no class has two samples in this batch"):
    _step(state)(
        state, {"images": images[one_each].reshape(-1, 8, 8, 1), "labels": labels[one_each]}, jax.random.key(0))
  assert set(losses.PROXY_LOSSES) | set(losses.PAIR_LOSSES) | set(losses.TUPLE_LOSSES) == set(losses.LOSS_NAMES)


def _xbm_state(name="multi_similarity", size=48):
  from hdml_jax.losses import init_memory

  return create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                            backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), generator_hidden=16,
                            config=_config(name), optimizer=OptimizerConfig(metric_lr=1e-3),
                            stats_block_length=4, loss_params={}, memory=init_memory(size, 6))


def _embed_train(state, images):
  """The step's embeddings of a batch (training-mode BatchNorm), recomputed outside the step."""
  n = state.networks
  y = n.backbone.apply({"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}, images,
                       train=True, mutable=["batch_stats"])[0]
  return n.embedding.apply({"params": state.params["embedding"], "batch_stats": state.batch_stats["embedding"]}, y,
                           train=True, mutable=["batch_stats"])[0]


def test_the_cross_batch_memory_adds_its_loss_from_xbm_start_and_fills_from_then():
  from hdml_jax.losses import multi_similarity_loss

  state = _xbm_state()
  step = jax.jit(_step(state, xbm_start=1, xbm_weight=0.5))
  state, m0 = step(state, _batch(0), jax.random.key(0))   # step 0: before xbm_start, nothing stored
  assert float(m0["xbm_loss"]) == 0.0 and not bool(state.memory.filled.any()) and int(state.memory.pointer) == 0
  for k in (1, 2):
    batch = _batch(k)
    z = _embed_train(state, batch["images"].astype(np.float32))
    plain = multi_similarity_loss(z, batch["labels"])
    want_xbm, want_memory = losses.cross_batch_loss(multi_similarity_loss, state.memory, z, batch["labels"])
    state, m = step(state, batch, jax.random.key(k))
    np.testing.assert_allclose(float(m["xbm_loss"]), float(want_xbm), rtol=1e-4)
    np.testing.assert_allclose(float(m["loss"]), float(plain + 0.5 * want_xbm), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(state.memory.embeddings), np.asarray(want_memory.embeddings), atol=1e-5)
  assert int(state.memory.filled.sum()) == 40 and int(state.memory.pointer) == 40
  np.testing.assert_array_equal(np.asarray(state.memory.labels[20:40]), _batch(2)["labels"])


def test_a_memory_is_refused_where_it_cannot_serve():
  from hdml_jax.losses import init_memory

  proxy = _state("proxy_anchor").replace(memory=init_memory(40, 6))
  with pytest.raises(ValueError, match="'proxy_anchor' is not a label-based loss; a cross-batch memory serves the "
                                       "label-based losses"):
    _step(proxy)(proxy, _batch(), jax.random.key(0))
  state = _xbm_state("circle")
  with pytest.raises(ValueError, match="a cross-batch memory is not supported under pmap"):
    _step(state, axis_name="batch")(state, _batch(), jax.random.key(0))
  with pytest.raises(ValueError, match="xbm_start and xbm_weight must be >= 0"):
    _step(state, xbm_start=-1)
  with pytest.raises(ValueError, match="the memory holds embeddings of width 4, but embedding_dim is 6"):
    create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                       backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), config=HDMLConfig(hdml=False),
                       memory=init_memory(40, 4))
  with pytest.raises(ValueError, match="a cross-batch memory serves a library pair loss"):
    create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                       backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), memory=init_memory(40, 6))


@pytest.mark.slow
@pytest.mark.parametrize("name", losses.PAIR_LOSSES)
def test_every_pair_loss_trains_with_a_memory(name):
  state = _xbm_state(name)
  step = jax.jit(_step(state))
  for k in range(3):
    state, metrics = step(state, _batch(k), jax.random.key(k))
    assert bool(metrics["finite"]) and float(metrics["xbm_loss"]) > 0.0, name
  assert int(state.memory.pointer) == 60 % 48 and bool(state.memory.filled.all())


def test_hyper_parameters_replace_the_papers_defaults_and_unknown_ones_are_refused():
  from hdml_jax.losses import multi_similarity_loss

  e = jax.random.normal(jax.random.key(0), (8, 6))
  y = jax.numpy.array([0, 0, 1, 1, 2, 2, 3, 3])
  default = losses.loss_spec("multi_similarity").fn({}, e, y, None)
  tuned = losses.loss_spec("multi_similarity", {"alpha": 1.0, "mining": False}).fn({}, e, y, None)
  np.testing.assert_allclose(default, multi_similarity_loss(e, y), rtol=1e-6)
  np.testing.assert_allclose(tuned, multi_similarity_loss(e, y, alpha=1.0, mining=False), rtol=1e-6)
  assert float(tuned) != float(default)
  margin = losses.loss_spec("margin", {"beta": 0.9, "cutoff": 0.3}).fn({}, e, y, jax.random.key(1))
  from hdml_jax.losses import distance_weighted_sampling, margin_loss
  neg = distance_weighted_sampling(jax.random.key(1), e, y, cutoff=0.3)
  np.testing.assert_allclose(margin, margin_loss(e, y, beta=0.9, negatives=neg), rtol=1e-6)
  assert losses.hyper_parameters("triplet_semi_hard") == {"margin": 0.2, "distance": "euclidean"}   # mining fixed
  assert set(losses.hyper_parameters("proxy_nca")) >= {"include_positive"}
  with pytest.raises(ValueError, match=r"loss 'triplet_all' takes no hyper-parameter 'mining'; its hyper-parameters "
                                       r"are margin=0.2, distance='euclidean'\."):
    losses.loss_spec("triplet_all", {"mining": "batch_hard"})
  with pytest.raises(ValueError, match=r"takes no hyper-parameter 'reduction'"):
    losses.loss_spec("circle", {"reduction": "sum"})
