"""A run's evaluations: each (step, split) embedded once, its metrics computed once; the streamed embedding."""

from unittest import mock

import numpy as np
import pytest

from experiments import datasets, selection
from hdml_jax.inference import embed_in_batches
from tests.helpers.library import tiny_state
from tests.helpers.runs import fast_default


def _data(n_val=10, n_test=13, seed=0):
  rng = np.random.default_rng(seed)
  split = lambda n: datasets.in_memory(rng.normal(size=(n, 8, 8, 1)).astype(np.float32), np.arange(n) % 3,
                                       ["a", "b", "c"])
  return datasets.Data(train=split(20), val=split(n_val), test=split(n_test),
                       prepare=lambda images, train, rng: images, image_shape=(8, 8, 1), is_image=False)


@pytest.mark.parametrize("batch_size", [1, 4, 13, 32])
def test_embed_split_equals_embedding_every_image_at_once(batch_size):
  state, data = tiny_state(), _data()
  got = selection.embed_split(state, data, data.test, batch_size)
  want = embed_in_batches(state, data.test.load(np.arange(len(data.test))), batch_size=64)
  assert got.shape == (13, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("devices, batch_size", [(8, 4), (8, 16), (4, 13), (2, 32)])
def test_embed_split_over_a_mesh_equals_one_device(devices, batch_size):
  import jax

  from hdml_jax import parallel

  if jax.device_count() < devices:
    pytest.skip(f"needs {devices} devices (the suite fakes 8 CPU devices)")
  state, data = tiny_state(), _data(n_test=29)
  mesh = parallel.make_data_mesh(jax.devices()[:devices])
  one = selection.embed_split(state, data, data.test, batch_size)
  many = selection.embed_split(state, data, data.test, batch_size, mesh=mesh)
  assert many.shape == one.shape == (29, 6)
  np.testing.assert_allclose(many, one, rtol=1e-6, atol=1e-6)


def test_embed_split_refuses_an_empty_split():
  data = _data()
  empty = datasets.Split(
      np.zeros(0, np.int32), [], lambda idx: np.zeros((0, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match="no images"):
    selection.embed_split(tiny_state(), data, empty, 4)


def test_each_step_and_split_is_embedded_once_and_its_metrics_computed_once():
  cfg, state, data = fast_default(), tiny_state(), _data()
  evals = selection.Evaluations(cfg, data)
  with mock.patch.object(selection, "embed_split", wraps=selection.embed_split) as embed, \
       mock.patch.object(selection.evaluation, "evaluate", wraps=selection.evaluation.evaluate) as metrics:
    a = evals.metrics(6, state, "test")
    b = evals.metrics(6, state, "test")
    recall_only = evals.metrics(6, state, "test", clustering=False)   # the clustering run's recall part
    assert a == b and "nmi" in a and "nmi" not in recall_only
    assert recall_only == {k: v for k, v in a.items() if k not in ("nmi", "f1")}
    np.testing.assert_array_equal(evals.embeddings(6, state, "test"), evals.embeddings(6, state, "test"))
    assert (embed.call_count, metrics.call_count) == (1, 1)
    evals.metrics(6, state, "val", clustering=False)
    evals.metrics(6, state, "val", clustering=True)   # the clustering metrics need their own run
    assert (embed.call_count, metrics.call_count) == (2, 3)
    # A loader is called only when the embeddings are not known.
    loader = mock.Mock(return_value=state)
    evals.metrics(6, loader, "test")
    loader.assert_not_called()
    evals.metrics(12, loader, "test")
    loader.assert_called_once()
    assert embed.call_count == 3
    # The two most recent steps are kept; an older one is embedded again.
    evals.embeddings(18, state, "test")
    evals.embeddings(12, state, "test")
    assert embed.call_count == 4
    evals.embeddings(6, state, "test")
    assert embed.call_count == 5
  with pytest.raises(ValueError, match="no 'val' split"):
    selection.Evaluations(cfg, datasets.Data(data.train, None, data.test, data.prepare, (8, 8, 1), False)
                          ).embeddings(1, state, "val")
