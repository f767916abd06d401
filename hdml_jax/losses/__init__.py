"""Every loss of the library, by family, behind one namespace: ``import hdml_jax.losses as L``.

* the reference tuple losses HDML is built on (:func:`npair_loss`,
  :func:`synthetic_npair_loss`, :func:`triplet_loss`, :func:`contrastive_loss`),
  their forms on a laid-out batch (:func:`npair_batch_loss`, ...) and
  :func:`cross_entropy`;
* the label-based losses, ``loss(embeddings, labels)``, with their mining
  (:func:`triplet_loss_from_labels`, :func:`multi_similarity_loss`,
  :func:`margin_loss`, ...);
* the proxy losses, ``loss(embeddings, labels, proxies)`` (:func:`proxy_anchor_loss`,
  :func:`cosface_loss`, ...);
* the cross-batch memory (:class:`CrossBatchMemory`, :func:`cross_batch_loss`),
  which every label-based loss takes through ``references=``;
* the registry the train step reads by name (:data:`LOSS_NAMES`,
  :func:`loss_spec`, :func:`hyper_parameters`, :func:`init_loss_params`).

The families live in private modules; this file only re-exports.
"""

from hdml_jax.losses._common import REDUCTIONS
from hdml_jax.losses._label import (  # label-based losses, loss(embeddings, labels), with their mining
    MININGS,
    circle_loss,
    contrastive_loss_from_labels,
    distance_weighted_sampling,
    lifted_structure_loss,
    margin_loss,
    multi_similarity_from_similarities,
    multi_similarity_loss,
    npair_loss_from_labels,
    supervised_contrastive_loss,
    triplet_loss_from_labels,
)
from hdml_jax.losses._memory import (  # the cross-batch memory (XBM)
    CrossBatchMemory,
    References,
    cross_batch_loss,
    enqueue,
    init_memory,
    memory_references,
)
from hdml_jax.losses._proxy import (  # proxy losses, loss(embeddings, labels, proxies)
    arcface_loss,
    cosface_loss,
    init_proxies,
    normalized_softmax_loss,
    proxy_anchor_loss,
    proxy_nca_loss,
)
from hdml_jax.losses._registry import (  # the registry the train step reads (loss.name)
    LAYOUTS,
    LOSS_NAMES,
    PAIR_LOSSES,
    PROXY_LOSSES,
    TUPLE_LOSSES,
    LossSpec,
    hyper_parameters,
    init_loss_params,
    loss_spec,
)
from hdml_jax.losses._tuple import (  # the reference tuple losses and cross-entropy
    contrastive_batch_loss,
    contrastive_loss,
    contrastive_triplet_loss,
    cross_entropy,
    npair_batch_loss,
    npair_loss,
    split_triplets,
    synthetic_npair_loss,
    triplet_batch_loss,
    triplet_loss,
)

__all__ = [
    "LAYOUTS",
    "LOSS_NAMES",
    "MININGS",
    "PAIR_LOSSES",
    "PROXY_LOSSES",
    "REDUCTIONS",
    "TUPLE_LOSSES",
    "arcface_loss",
    "circle_loss",
    "contrastive_batch_loss",
    "contrastive_loss",
    "contrastive_loss_from_labels",
    "contrastive_triplet_loss",
    "cosface_loss",
    "cross_batch_loss",
    "cross_entropy",
    "CrossBatchMemory",
    "distance_weighted_sampling",
    "enqueue",
    "hyper_parameters",
    "init_loss_params",
    "init_memory",
    "init_proxies",
    "lifted_structure_loss",
    "loss_spec",
    "LossSpec",
    "margin_loss",
    "memory_references",
    "multi_similarity_from_similarities",
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "npair_batch_loss",
    "npair_loss",
    "npair_loss_from_labels",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "References",
    "split_triplets",
    "supervised_contrastive_loss",
    "synthetic_npair_loss",
    "triplet_batch_loss",
    "triplet_loss",
    "triplet_loss_from_labels",
]
