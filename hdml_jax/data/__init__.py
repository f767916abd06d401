"""Datasets, batch samplers and preprocessing.

TFDS builders live in :mod:`hdml_jax.data.tfds_builders` and their reader in
:mod:`hdml_jax.data.tfds_source` (imported on demand: they pull in
tensorflow-datasets, an optional dependency).
"""

from hdml_jax.data.digits import load_digits_split
from hdml_jax.data.samplers import (
    EpochNPairSampler,
    MPerClassSampler,
    NPairSampler,
    TripletSampler,
    make_sampler,
)

__all__ = ["EpochNPairSampler", "MPerClassSampler", "NPairSampler", "TripletSampler",
           "load_digits_split", "make_sampler"]
