"""Datasets, batch samplers and preprocessing."""

from hdml_jax.data.digits import load_digits_split
from hdml_jax.data.samplers import NPairSampler, TripletSampler, make_sampler

__all__ = ["NPairSampler", "TripletSampler", "load_digits_split", "make_sampler"]
