"""Photos travel to the device as uint8 crops and are normalised there: the same model input as the host's."""

import itertools

import numpy as np

from experiments import datasets
from tests.helpers.runs import tiny_cub


def _first_batches(cfg, data, n=2):
  return list(itertools.islice(datasets.train_batches(cfg, data, start_step=0, rows=slice(None)), n))


def test_uint8_batches_normalised_on_the_device_equal_the_hosts_float_batches():
  on_host = tiny_cub(**{"dataset.normalize_on_device": False, "dataset.preprocess": "standard"})
  on_device = tiny_cub(**{"dataset.preprocess": "standard"})
  host, device = datasets.load_data(on_host), datasets.load_data(on_device)
  assert host.normalize is None and device.normalize is not None
  for a, b in zip(_first_batches(on_host, host), _first_batches(on_device, device)):
    assert a["images"].dtype == np.float32 and b["images"].dtype == np.uint8
    assert b["images"].nbytes * 4 == a["images"].nbytes   # a quarter of the bytes cross to the device
    np.testing.assert_array_equal(np.asarray(device.model_input(b["images"])), a["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  for (start_a, a), (start_b, b) in zip(datasets.eval_batches(host, host.test, 8),
                                        datasets.eval_batches(device, device.test, 8)):
    assert start_a == start_b and b.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(device.model_input(b)), a)
  assert host.model_input is not None and host.model_input(a) is a   # nothing to do on the host path


def test_the_digits_have_no_device_normalisation():   # not photos: prepare gives the model input
  from experiments.configs import default

  assert datasets.load_data(default.get_config()).normalize is None
