"""hdml_jax: Hardness-Aware Deep Metric Learning in JAX/Flax.

Public re-exports only; each concept lives in its own module.
"""

from hdml_jax.distances import (
    pairwise_distances,
    pairwise_squared_distances,
    rowwise_distances,
    rowwise_squared_distances,
    safe_sqrt,
)
from hdml_jax.hardness import (
    NPairTuples,
    expand_npair_tuples,
    hardness_factor,
    npair_synthetic_labels,
    synthesize_negatives,
)
from hdml_jax.losses import (
    contrastive_loss,
    cross_entropy,
    npair_loss,
    split_triplets,
    synthetic_npair_loss,
    triplet_loss,
)
from hdml_jax.label_losses import (
    contrastive_loss_from_labels,
    npair_loss_from_labels,
    triplet_loss_from_labels,
)
from hdml_jax.objective import (
    classifier_loss,
    metric_objective,
    metric_weight,
    reconstruction_loss,
    soft_loss_npair,
    soft_loss_triplet,
    weight_decay,
)
from hdml_jax.statistics import AdaptiveStatistics, init_statistics, update_statistics
from hdml_jax.evaluation import evaluate, evaluate_query_gallery
from hdml_jax.train_state import HDMLConfig, HDMLTrainState, OptimizerConfig, create_train_state
from hdml_jax.train_step import embed_in_batches, make_embed_fn, make_train_step

__version__ = "0.1.0"

__all__ = [
    "AdaptiveStatistics",
    "HDMLConfig",
    "HDMLTrainState",
    "OptimizerConfig",
    "create_train_state",
    "embed_in_batches",
    "evaluate",
    "evaluate_query_gallery",
    "make_embed_fn",
    "make_train_step",
    "NPairTuples",
    "classifier_loss",
    "contrastive_loss",
    "contrastive_loss_from_labels",
    "cross_entropy",
    "expand_npair_tuples",
    "hardness_factor",
    "init_statistics",
    "metric_objective",
    "metric_weight",
    "npair_loss",
    "npair_loss_from_labels",
    "npair_synthetic_labels",
    "pairwise_distances",
    "pairwise_squared_distances",
    "reconstruction_loss",
    "rowwise_distances",
    "rowwise_squared_distances",
    "safe_sqrt",
    "soft_loss_npair",
    "soft_loss_triplet",
    "split_triplets",
    "synthesize_negatives",
    "synthetic_npair_loss",
    "triplet_loss",
    "triplet_loss_from_labels",
    "update_statistics",
    "weight_decay",
]
