"""hdml_jax: Hardness-Aware Deep Metric Learning in JAX/Flax.

The curated public API: the losses, the hardness-aware synthesis, the HDML
objective for your own loop, the train state and step, and the evaluation
entry points. Each concept lives in its own module; this file only
re-exports.
"""

from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.distances import (
    l2_normalize,
    pairwise_distances,
    pairwise_squared_distances,
    rowwise_distances,
    rowwise_squared_distances,
    safe_sqrt,
)
from hdml_jax.evaluation import cluster_metrics, evaluate, evaluate_query_gallery, nearest_neighbors
from hdml_jax.hardness import (
    NPairTuples,
    expand_npair_tuples,
    hardness_factor,
    npair_synthetic_labels,
    synthesize_negatives,
)
from hdml_jax.head import HDMLOutput, hdml_objective, init_hdml_head
from hdml_jax.inference import embed_in_batches, make_embed_fn
from hdml_jax.losses import (
    arcface_loss,
    circle_loss,
    contrastive_loss,
    contrastive_loss_from_labels,
    cosface_loss,
    cross_entropy,
    distance_weighted_sampling,
    init_proxies,
    lifted_structure_loss,
    margin_loss,
    multi_similarity_loss,
    normalized_softmax_loss,
    npair_loss,
    npair_loss_from_labels,
    proxy_anchor_loss,
    proxy_nca_loss,
    split_triplets,
    supervised_contrastive_loss,
    synthetic_npair_loss,
    triplet_loss,
    triplet_loss_from_labels,
)
from hdml_jax.networks import HDMLHead, Networks, build_networks
from hdml_jax.objective import (
    classifier_loss,
    metric_objective,
    metric_weight,
    reconstruction_loss,
    soft_loss_npair,
    soft_loss_triplet,
    weight_decay,
)
from hdml_jax.optimizers import make_optimizer
from hdml_jax.statistics import AdaptiveStatistics, init_statistics, update_statistics
from hdml_jax.train_state import HDMLTrainState, create_train_state
from hdml_jax.train_step import make_train_step

__version__ = "0.1.0"

__all__ = [
    "AdaptiveStatistics",
    "HDMLConfig",
    "HDMLHead",
    "HDMLOutput",
    "HDMLTrainState",
    "Networks",
    "OptimizerConfig",
    "arcface_loss",
    "build_networks",
    "circle_loss",
    "cosface_loss",
    "distance_weighted_sampling",
    "cluster_metrics",
    "create_train_state",
    "embed_in_batches",
    "evaluate",
    "evaluate_query_gallery",
    "hdml_objective",
    "init_hdml_head",
    "init_proxies",
    "l2_normalize",
    "lifted_structure_loss",
    "make_embed_fn",
    "margin_loss",
    "make_optimizer",
    "make_train_step",
    "nearest_neighbors",
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
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "npair_loss",
    "npair_loss_from_labels",
    "npair_synthetic_labels",
    "pairwise_distances",
    "pairwise_squared_distances",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "reconstruction_loss",
    "rowwise_distances",
    "rowwise_squared_distances",
    "safe_sqrt",
    "soft_loss_npair",
    "soft_loss_triplet",
    "split_triplets",
    "supervised_contrastive_loss",
    "synthesize_negatives",
    "synthetic_npair_loss",
    "triplet_loss",
    "triplet_loss_from_labels",
    "update_statistics",
    "weight_decay",
]
