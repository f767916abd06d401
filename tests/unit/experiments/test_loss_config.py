"""config.loss: the one method key (loss.name, with hdml.enabled) in the experiments, and the one-line refusals
of bad set-ups."""

import subprocess
import sys

import pytest

from experiments.run_config import validate_config
from tests.helpers.library import REPO
from tests.helpers.runs import fast_default


def _cfg(**overrides):
  return fast_default(**{"hdml.enabled": False, "batch_size": 20, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"loss.name": "multisim"}, r"config.loss.name='multisim' is not a loss; choose one of npair, triplet, contrastive, "
                                r"npair_labels"),
    ({"loss.name": "hdml"}, r"config.loss.name='hdml' is no longer a method: name the loss itself, e.g. "
                            r"config.loss.name=npair \(what config.hdml.loss was\)"),
    ({"loss.name": "circle", "hdml.enabled": True},
     r"HDML has no synthesis for config.loss.name='circle' .*: set config.hdml.enabled=False"),
    ({"loss.name": "circle", "loss.m_per_class": 1}, r"'circle' compares samples of one class, so a batch needs at least 2"),
    ({"loss.name": "proxy_anchor", "loss.m_per_class": 0}, r"'proxy_anchor' needs at least 1 image per class"),
    ({"loss.name": "margin", "loss.m_per_class": 3}, r"config.batch_size=20 is not a multiple of config.loss.m_per_class=3"),
    ({"loss.name": "margin", "epoch_sampler": True}, r"config.epoch_sampler is for N-pair batches; "
                                                       r"config.loss.name='margin' uses the M-per-class sampler"),
    ({"loss.name": "triplet", "epoch_sampler": True, "batch_size": 21},
     r"config.epoch_sampler is for N-pair batches, not config.loss.name='triplet'"),
    ({"loss.name": "multi_similarity", "hdml.enabled": True, "loss.m_per_class": 1},
     r"config.loss.name='multi_similarity' compares samples of one class, so a batch needs at least 2 per class"),
    ({"loss.name": "multi_similarity", "hdml.enabled": True, "loss.m_per_class": 3},
     r"config.batch_size=20 is not a multiple of config.loss.m_per_class=3"),
    ({"loss.name": "multi_similarity", "hdml.enabled": True, "epoch_sampler": True},
     r"config.epoch_sampler is for N-pair batches; config.loss.name='multi_similarity' uses the M-per-class"),
    ({"loss.name": "proxy_anchor", "loss.xbm_size": 64},
     r"config.loss.xbm_size=64: a cross-batch memory serves the label-based losses \(npair_labels"),
    ({"loss.name": "npair", "hdml.enabled": True, "loss.xbm_size": 64}, r"not config.loss.name='npair'"),
    ({"loss.name": "multi_similarity", "hdml.enabled": True, "loss.xbm_size": 64},
     r"a cross-batch memory serves training without HDML's synthesis"),
    ({"loss.name": "circle", "loss.xbm_size": 10}, r"config.loss.xbm_size=10 is smaller than config.batch_size=20"),
    ({"loss.name": "circle", "loss.xbm_size": 64, "loss.xbm_start": -1}, r"config.loss.xbm_start must be an integer >= 0"),
    ({"loss.name": "circle", "loss.xbm_weight": -0.5}, r"config.loss.xbm_weight must be a number >= 0, got -0.5"),
    ({"loss.name": "circle", "loss.kwargs": {'gama': 60.0}},
     r"config.loss.kwargs: loss 'circle' takes no hyper-parameter 'gama'; its hyper-parameters are margin=0.4, gamma=80.0"),
    ({"loss.kwargs": {'alpha': 1.0}, "hdml.enabled": True},
     r"config.loss.kwargs=\{'alpha': 1.0\} sets a label-based or proxy loss's hyper-parameters, but "
     r"config.loss.name='npair' reads its own from config.hdml"),
])
def test_bad_loss_settings_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate_config(_cfg(**overrides))


def test_good_settings_pass():
  validate_config(_cfg(**{"loss.name": "proxy_anchor", "loss.m_per_class": 1}))
  validate_config(_cfg(**{"loss.name": "multi_similarity"}))
  validate_config(_cfg(**{"loss.name": "multi_similarity", "hdml.enabled": True}))   # HDML on Multi-Similarity
  validate_config(_cfg(**{"loss.name": "margin", "loss.xbm_size": 20, "loss.xbm_start": 3}))
  validate_config(fast_default())   # loss.name "npair": HDML N-pair, the reference
  validate_config(fast_default(**{"loss.name": "triplet", "batch_size": 9}))


@pytest.mark.slow
def test_the_command_line_refuses_in_one_line_before_anything_starts():
  proc = subprocess.run([sys.executable, "-m", "experiments.main", "--workdir", "/nonexistent/never/created",
                         "--config.loss.name=multisim"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("python3 -m experiments.main: error: config.loss.name=")
  assert "Traceback" not in proc.stderr
