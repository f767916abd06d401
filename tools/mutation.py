"""Mutation testing of the core modules with mutmut (a script, not part of CI).

    python3 -m pip install mutmut
    python3 -m tools.mutation                          # every core module, its own tests
    python3 -m tools.mutation --changed main           # only core modules changed since main
    python3 -m tools.mutation --modules distances,hardness --report mutation_report.md
    python3 -m tools.mutation --modules none --with_application   # the training loop's resume and selection

mutmut works on a copy: the script copies the checkout's library, the
application and the tests into ``--workdir`` (default ``/tmp/hdml_mutation``;
kept between calls, so a second call only re-runs what changed), writes the
mutmut configuration there (the modules to mutate, and for each only the
test files that exercise it), runs ``mutmut run`` and writes a Markdown
report: the score per module and every surviving mutant with its diff.
A survivor is then either killed by a new test or listed in ``EQUIVALENT``
below with the reason it cannot change behaviour.

Score: killed / (killed + survived + timeout), equivalent mutants left out;
timeouts count against the score until each is looked at (a mutant can hang
the tests, which catches it, but a hung worker is not a kill); those looked
at are listed in ``HANGS`` and counted as killed. A mutant that makes a test module fail to import
(pytest exits 2, which mutmut reports as "interrupted") is collected again under the mutant and counted
as killed only if collection fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tools/ is in the checkout's root

# Core module -> the tests that exercise it (the relevant tests only, so a run fits in about an hour).
CORE = {
    "losses/_tuple": ["tests/unit/test_losses.py"],
    "losses/_label": ["tests/unit/test_label_losses.py", "tests/unit/test_pair_losses.py",
                      "tests/unit/test_margin_loss.py", "tests/unit/test_cross_batch.py"],
    "losses/_common": ["tests/unit/test_label_losses.py", "tests/unit/test_pair_losses.py",
                       "tests/unit/test_proxy_losses.py"],
    "hardness": ["tests/unit/test_hardness.py"],
    # Mapped, not yet run (see docs/mutation.md).
    "losses/_proxy": ["tests/unit/test_proxy_losses.py"],
    "losses/_memory": ["tests/unit/test_cross_batch.py", "tests/unit/test_train_step_losses.py"],
    "losses/_registry": ["tests/unit/test_train_step_losses.py"],
    "objective": ["tests/unit/test_objective.py"],
    "head": ["tests/unit/test_head.py", "tests/unit/test_own_loop.py", "tests/unit/test_gradient_paths.py"],
    "statistics": ["tests/unit/test_statistics.py"],
    "distances": ["tests/unit/test_distances.py"],
    "train_step": ["tests/unit/test_train_step.py", "tests/unit/test_gradient_paths.py", "tests/unit/test_parallel.py",
                   "tests/unit/test_train_step_losses.py"],
    "train_state": ["tests/unit/test_train_state.py", "tests/unit/test_train_step.py"],
    "config": ["tests/unit/test_train_state.py"],
    "optimizers": ["tests/unit/test_train_state.py", "tests/unit/models/test_models.py"],
    "networks": ["tests/unit/test_train_state.py", "tests/unit/test_train_step.py", "tests/unit/test_own_loop.py"],
    "evaluation": ["tests/unit/evaluation"],   # a package: every module in it
    "data/samplers": ["tests/unit/data/test_data.py", "tests/unit/data/test_samplers.py"],
}
# The resume and selection logic of the training loop: the toy-state loop tests first, then the end-to-end
# runs that exercise the same logic through real training (only those, so that a survivor costs minutes).
_APPLICATION_TESTS = [
    "tests/unit/experiments/test_train_loop.py",
    "tests/integration/test_selection.py",
    "tests/integration/test_experiments.py::ExperimentsTest::test_resume_after_a_crash_matches_an_uninterrupted_run",
    "tests/integration/test_experiments.py::ExperimentsTest::test_best_checkpoint_on_held_out_training_classes",
    "tests/integration/test_experiments.py::ExperimentsTest::test_an_update_to_inf_is_never_checkpointed",
    "tests/integration/test_experiments.py::ExperimentsTest::test_resume_skips_a_non_finite_checkpoint_of_an_older_version",
]
APPLICATION = {path: _APPLICATION_TESTS for path in ("experiments/loop.py", "experiments/runtime.py", "experiments/selection.py",
                                                   "experiments/run_config.py", "experiments/checkpoints.py")}
# Of those files, only these functions are mutated (mutmut's names, fnmatch patterns): the loop that
# checkpoints, resuming, the selection's best checkpoint, the check that a resume keeps the run's config, and
# the checkpoint reads and checks they use.
APPLICATION_FUNCTIONS = (
    "experiments.loop.x_run_loop__mutmut_*",
    "experiments.runtime.x_resume__mutmut_*",
    "experiments.selection.xǁBestCheckpointǁ*",
    "experiments.selection.x_selection_name__mutmut_*",
    "experiments.run_config.x_check_run_config__mutmut_*",
    "experiments.run_config.x__flat__mutmut_*",
    "experiments.checkpoints.x_state_tree__mutmut_*",
    "experiments.checkpoints.x_non_finite_leaves__mutmut_*",
    "experiments.checkpoints.x_save__mutmut_*",
    "experiments.checkpoints.x_restore__mutmut_*",
    "experiments.checkpoints.x_restore_latest_finite__mutmut_*",
)

# Mutant name -> why it cannot change behaviour (filled in as survivors are reviewed).
EQUIVALENT: dict[str, str] = {
    "hdml_jax.distances.x_rowwise_squared_distances__mutmut_36":
        "`axis=-1` -> `axis=+1` on rank-2 inputs (checked rank): the same axis.",
    "hdml_jax.distances.x_safe_sqrt__mutmut_11":
        "the placeholder 1.0 -> 2.0 under the square root is used only where `x <= 0`, where the outer `where` "
        "returns 0 and zeroes the gradient: any positive constant is the same.",
    "hdml_jax.losses.x_npair_loss__mutmut_59": "the same as mutant 56 (`keepdims` dropped).",
    "hdml_jax.losses.x_npair_loss__mutmut_61": "the same as mutant 56 (`keepdims=False`).",
    "hdml_jax.distances.x_pairwise_squared_distances__mutmut_48":
        "`precision=HIGHEST` -> default: equivalent on CPU, where the tests run (float32 products are exact "
        "float32 either way); on GPU/TPU the default allows TF32/bfloat16 passes, which HIGHEST rules out.",
    "hdml_jax.distances.x_pairwise_squared_distances__mutmut_51":
        "the same as mutant 48 (the precision argument dropped).",
    "hdml_jax.losses.x_npair_loss__mutmut_56":
        "`keepdims=True` -> `None` in the same-label row sums: the matrix is symmetric, so dividing column j by "
        "the size of j's class equals dividing row i by the size of i's class wherever the entry is non-zero.",
    "hdml_jax.losses.x_synthetic_npair_loss__mutmut_45":
        "einsum subscripts in upper case: the same contraction.",
    "hdml_jax.losses.x_synthetic_npair_loss__mutmut_64":
        "`axis=-1` -> `axis=+1` on the rank-2 anchors (checked rank): the same axis.",
    "hdml_jax.hardness.x__synthesize__mutmut_17":
        "the safe divisor 1.0 -> 2.0 is used only where the negative is not moved (`harder` false), where "
        "`jnp.where` discards the value and zeroes the gradient: any non-zero constant is the same.",
    "hdml_jax.hardness.xǁNPairTuplesǁflat__mutmut_5":
        "dropping `axis=0` from `jnp.concatenate`: 0 is its default axis.",
    "hdml_jax.statistics.x_update_statistics__mutmut_71":
        "`count > 0` -> `count >= 0` in `first`: with count 0 the block's total is 0, so the value written, "
        "0 / max(0, 1) = 0, equals the previous first-block mean that the condition requires to be 0.",
    'hdml_jax.data.samplers.xǁEpochNPairSamplerǁ__call____mutmut_9':
        '`reshape(-1)` -> `reshape(-2)`: NumPy 2 takes any negative size as the inferred one.',
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_35':
        "the same as EpochNPairSampler's mutant 9 (`reshape(-2, m)`).",
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_18':
        "`replace=False` -> `replace=None`: NumPy's `choice` tests `replace` for truth, and None is false.",
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_51':
        'the same as mutant 18 (`replace=None`).',
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_65':
        'the same as mutant 18 (`replace=None`).',
    'hdml_jax.data.samplers.xǁNPairSamplerǁ__call____mutmut_6':
        "the same as MPerClassSampler._plan's mutant 18 (`replace=None`).",
    'hdml_jax.data.samplers.xǁNPairSamplerǁ__call____mutmut_15':
        "the same as MPerClassSampler._plan's mutant 18 (`replace=None`).",
    'hdml_jax.data.samplers.xǁTripletSamplerǁ__call____mutmut_17':
        "the same as MPerClassSampler._plan's mutant 18 (`replace=None`).",
    'hdml_jax.data.samplers.xǁTripletSamplerǁ__call____mutmut_30':
        "dropping `replace=True`: True is `choice`'s default.",
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_47':
        '`<` -> `<=` before the fill-in: when the batch is full the fill-in draws `size=0`, which returns '
        "nothing and leaves the generator's state unchanged (checked), so every later draw is the same.",
    'hdml_jax.data.samplers.xǁMPerClassSamplerǁ_plan__mutmut_3':
        "the epoch plan's stream label 2 -> 3: another deterministic stream of the same (seed, epoch); every "
        'contract (determinism in seed and step, coverage, distinct classes and images) holds for either, and'
        ' only a pinned batch list could tell them apart.',
    'hdml_jax.label_losses.x__check__mutmut_1':
        '`require_pairs` default False -> True in the private `_check`: every caller that needs pairs passes '
        'it explicitly, and the one that does not (contrastive, `needs_pairs=False`) never reaches it.',
    'hdml_jax.label_losses.x__distances__mutmut_3':
        '`pairwise_squared_distances(e, e)` -> `(e, None)`: None means the first argument again.',
    'hdml_jax.label_losses.x__distances__mutmut_4':
        'the same as mutant 3 (the second argument dropped).',
    'hdml_jax.label_losses.x__distances__mutmut_5':
        'the same as mutant 3 (the second argument dropped).',
    'hdml_jax.label_losses.x_contrastive_loss_from_labels__mutmut_12':
        '`needs_pairs=False` -> None: tested for truth only.',
    'hdml_jax.label_losses.x_npair_loss_from_labels__mutmut_32':
        "`jnp.eye(b, dtype=bool)` -> a float identity as `jnp.where`'s condition: non-zero is true, the same mask.",
    'hdml_jax.label_losses.x_npair_loss_from_labels__mutmut_34':
        'the same as mutant 32 (dtype dropped).',
    'hdml_jax.label_losses.x_npair_loss_from_labels__mutmut_40':
        '`log_softmax(axis=1)` -> the default axis -1 on the rank-2 logits: the same axis.',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_66':
        'batch-hard `neg.any(axis=1)` -> `neg.any()`: a row lacks a negative only when the batch has a single'
        ' class, and then every row does.',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_78':
        "the placeholder 0.0 -> 1.0 for anchors without a valid triplet: `_reduce` (and the 'none' path) zero"
        ' those rows, value and gradient.',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_132':
        'the inner placeholder of a double `where` (0.0 -> 1.0): used only where the outer `where` returns 0.',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_146':
        "semi-hard 'none': `counts > 0` -> `>= 0`: a row with no kept pair sums zeros, 0 / max(0, 1) = 0 "
        'either way.',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_173':
        "the placeholder for non-triplets 0.0 -> 1.0: every use masks `losses` with `trip` again ('none' path"
        ' and `_reduce`).',
    'hdml_jax.label_losses.x_triplet_loss_from_labels__mutmut_187':
        "the same as mutant 146, for `mining='all'`.",
    "hdml_jax.train_step.x_make_train_step__mutmut_59":
        "the head's parameters keep the `backbone` entry (`!= 'XXbackboneXX'`): `hdml_objective` reads only "
        "`embedding`, `generator` and `classifier`, so the extra entry is never read and gets no gradient there.",
    "hdml_jax.train_step.x_make_train_step__mutmut_60": "the same as mutant 59 (`!= 'BACKBONE'`).",
    "hdml_jax.train_step.x_make_train_step__mutmut_63":
        "the same as mutant 59, for the head's BatchNorm statistics (an unread `backbone` entry).",
    "hdml_jax.train_step.x_make_train_step__mutmut_64": "the same as mutant 63 (`!= 'BACKBONE'`).",
    "hdml_jax.train_step.x_make_train_step__mutmut_83":
        "`bb_new.get('batch_stats', None)`: the step always passes a `batch_stats` entry to the backbone's "
        "`apply(..., mutable=['batch_stats'])`, and Flax then always returns that collection, empty for a "
        "backbone without BatchNorm (checked), so the default is never used.",
    "hdml_jax.train_step.x_make_train_step__mutmut_85": "the same as mutant 83 (the default dropped: None).",
    "hdml_jax.train_state.x_create_train_state__mutmut_19":
        "the dummy batch's dtype float32 -> the default: it is float32 unless x64 is on, and the dummy only sets "
        "shapes; every parameter and BatchNorm statistic has the module's own dtype (float32) either way.",
    "hdml_jax.train_state.x_create_train_state__mutmut_21": "the same as mutant 19 (dtype dropped).",
    "hdml_jax.train_state.x_create_train_state__mutmut_76": "the same as mutant 19, for the feature dummy.",
    "hdml_jax.train_state.x_create_train_state__mutmut_78": "the same as mutant 76 (dtype dropped).",
    "hdml_jax.train_state.x_create_train_state__mutmut_79":
        "the feature dummy's batch 2 -> 3: `init` takes only shapes of the feature axis from it; the variables "
        "and their initial values do not depend on the batch size.",
    "hdml_jax.train_state.x_create_train_state__mutmut_122": "the same as mutant 79, for the generator's dummy.",
    "hdml_jax.train_state.x_create_train_state__mutmut_34":
        "`init(..., train=False)` -> `train=None`: every module reads `train` for truth (`not train`), and None "
        "is false.",
    "hdml_jax.train_state.x_create_train_state__mutmut_47": "the same as mutant 34, in the `eval_shape` call.",
    "hdml_jax.train_state.x_create_train_state__mutmut_83": "the same as mutant 34, for the embedding head.",
    "hdml_jax.train_state.x_create_train_state__mutmut_117": "the same as mutant 34, for the generator.",
    "hdml_jax.train_state.x_create_train_state__mutmut_38":
        "the backbone initialised with `train=True`: Flax's BatchNorm skips the moving-average update while "
        "initialising and `make_rng` falls back to the params key, so the variables are identical (checked for "
        "`small_cnn` and `googlenet`: same tree, maximum difference 0.0). The shape probe, whose train flag does "
        "matter (a dropout backbone), is tested.",
    "hdml_jax.train_state.x_create_train_state__mutmut_87": "the same as mutant 38, for the embedding head.",
    "hdml_jax.train_state.x_create_train_state__mutmut_123": "the same as mutant 38, for the generator.",
    "hdml_jax.head.x_init_hdml_head__mutmut_43":
        "the same as `create_train_state`'s mutant 19: the feature dummy's dtype (only shapes matter).",
    "hdml_jax.head.x_init_hdml_head__mutmut_45": "the same as mutant 43 (dtype dropped).",
    "hdml_jax.head.x_init_hdml_head__mutmut_46":
        "the same as `create_train_state`'s mutant 79: the feature dummy's batch size.",
    "hdml_jax.head.x_init_hdml_head__mutmut_73": "the same as mutant 46, for the generator's dummy.",
    "hdml_jax.head.x_init_hdml_head__mutmut_50":
        "the same as `create_train_state`'s mutant 34: `train=None` is read for truth, and None is false.",
    "hdml_jax.head.x_init_hdml_head__mutmut_68": "the same as mutant 50, for the generator.",
    "hdml_jax.head.x_init_hdml_head__mutmut_54":
        "the same as `create_train_state`'s mutant 38: initialising with `train=True` gives identical variables.",
    "hdml_jax.head.x_init_hdml_head__mutmut_74": "the same as mutant 54, for the generator.",
    "hdml_jax.head.x_hdml_objective__mutmut_24":
        "the label of the decayed backbone subtree in the tree given to `weight_decay`: a leaf decays by its own "
        "name (kernel, bias) and the BatchNorm names enclosing it, and neither label is one of those.",
    "hdml_jax.head.x_hdml_objective__mutmut_25": "the same as mutant 24 (`BACKBONE`).",
    "hdml_jax.head.x_hdml_objective__mutmut_29": "the same as mutant 24, for the `fc1` label.",
    "hdml_jax.head.x_hdml_objective__mutmut_30": "the same as mutant 29 (`FC1`).",
    "hdml_jax.head.x_hdml_objective__mutmut_104":
        "the moving statistics given to the generator's J_metric pass (key renamed): that pass runs in training "
        "mode, which normalises with the batch's own statistics, and its updated statistics are discarded, so "
        "the statistics it is given are never read.",
    "hdml_jax.head.x_hdml_objective__mutmut_105": "the same as mutant 104 (`BATCH_STATS`).",
    "hdml_jax.head.x_hdml_objective__mutmut_114":
        "BN1's second pass always given the first pass's statistics: with `bn1_update='real'` that pass's "
        "updated statistics are discarded and training mode normalises with the batch's own statistics, so "
        "which statistics it is given matters only for 'both' (tested).",
    "hdml_jax.evaluation._exact.x__refine__mutmut_1":
        "`_refine`'s block of 128 rows -> 129: blocks bound the memory of one float64 distance computation; every "
        "row is ranked on its own, whichever block holds it.",
    "hdml_jax.evaluation._exact.x__refine__mutmut_10":
        "the float64 output's dtype dropped (`np.empty(shape, None)`): NumPy's default dtype is float64.",
    "hdml_jax.evaluation._exact.x__refine__mutmut_12": "the same as mutant 10 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__refine__mutmut_19":
        "the loop's step dropped (`range(0, n)`): the blocks then overlap, and each row is ranked again with the "
        "same result (slower, not different).",
    "hdml_jax.evaluation._exact.x__refine__mutmut_34":
        "`np.lexsort(..., axis=-1)` -> the default axis, which is -1.",
    "hdml_jax.evaluation._exact.x__refine__mutmut_35": "`axis=-1` -> `axis=+1` on the 2-D distances: the same axis.",
    "hdml_jax.evaluation._exact.x__refine__mutmut_44":
        "`np.take_along_axis(..., axis=1)` on 2-D arrays -> the default axis, -1 in NumPy >= 2.3 (the same axis).",
    "hdml_jax.evaluation._exact.x__refine__mutmut_53": "the same as mutant 44, for the distances.",
    "hdml_jax.evaluation._exact.x__distances64__mutmut_10": "einsum subscripts in upper case: the same contraction.",
    "hdml_jax.evaluation._kmeans.x__relocate_empty__mutmut_17":
        "`kind='stable'` -> `'STABLE'`: NumPy reads the sort kind case-insensitively (checked: the same order "
        "on ties, which the ties test pins for 'stable').",
    "hdml_jax.evaluation._exact.x_nearest_neighbors__mutmut_1":
        "the default `chunk_size` 1024 -> 1025: queries per device call bound memory only; neighbours are exact "
        "for any chunk size (tested for 1 to 5,000).",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_2": "the same as `nearest_neighbors`' mutant 1.",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_64":
        "the queries multiplied by their norms instead of divided: once the gallery is normalised, a query's "
        "own scale c > 0 cannot change its ranking (|cq - g|^2 = c^2 |q|^2 + 1 - 2c q.g), so only the gallery's "
        "normalisation matters in query-gallery mode (tested; in leave-one-out mode every row is both).",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_70":
        "the same as mutant 64: the queries divided by one global norm (a positive factor).",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_73": "the same as mutant 70 (axis dropped).",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_77":
        "the same as mutant 64: a floor of ~1 on the queries' norms divides each by a positive factor.",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_117":
        "the neighbours fetched at least 2 instead of 1 (then clipped to the gallery): extra neighbours are "
        "never read by a metric of the first K or first R.",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_122":
        "`exclude_self=False` -> None: read for truth only, and None is false.",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_126":
        "the labels not given to the search: they only let it skip re-ranking close runs of equally relevant "
        "neighbours; without them every close run is re-ranked in float64, and the neighbours' labels in rank "
        "order are the same.",
    "hdml_jax.evaluation._api.x_evaluate_query_gallery__mutmut_133": "the same as mutant 126 (`labels` dropped).",
    "hdml_jax.evaluation._api.x_evaluate__mutmut_8": "the same as `nearest_neighbors`' mutant 1 (default chunk size).",
    "hdml_jax.evaluation._kmeans.x__relocate_empty__mutmut_36":
        "the count of a relocated (formerly empty) cluster set to 2 instead of 1: a later relocation reads the "
        "count of a point's original cluster, and no point was assigned to an empty one, so it is never read.",
    "hdml_jax.evaluation._metrics.x__pairs__mutmut_2": "`astype(None)`: NumPy's default dtype is float64, as written.",
    "hdml_jax.evaluation._metrics.x__pairs__mutmut_5":
        "the pair count C(n, 2) scaled by 4: `_pairs` is read only by `pair_f1`, whose precision and recall are "
        "ratios of two such counts, so any common factor cancels.",
    "hdml_jax.evaluation._metrics.x__pairs__mutmut_9": "the same as mutant 5 (a factor 2/3).",
    "hdml_jax.evaluation._metrics.x_pair_f1__mutmut_15":
        "precision 1.0 instead of 0.0 when no predicted pair exists: then no pair is a true positive, so recall "
        "is 0 and F1 = 2PR / (P + R) is 0 either way.",
    "hdml_jax.evaluation._metrics.x_pair_f1__mutmut_20": "the same as mutant 15, for recall when no class has a pair.",
    "hdml_jax.evaluation._kmeans.x_kmeans_settings__mutmut_12":
        "the name \"fast\" resolved from \"auto\" misspelt: it is compared only with \"reference\", and the "
        "settings returned spell their protocol themselves (tested).",
    "hdml_jax.evaluation._kmeans.x_kmeans_settings__mutmut_13": "the same as mutant 12 (`FAST`).",
    "hdml_jax.evaluation._select.x__smallest__mutmut_4":
        "`cols // 16 < 4k` -> `cols / 16 < 4k`: the two differ only when 16 does not divide `cols`, and then the "
        "first condition (`cols % 16`) already chooses the one-stage path.",
    "hdml_jax.evaluation._api.x_evaluate__mutmut_100":
        "the same as `evaluate_query_gallery`'s mutant 126 (the labels not given to the search).",
    "hdml_jax.evaluation._api.x_evaluate__mutmut_107": "the same as mutant 100 (`labels` dropped).",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_1":
        "the block of 16,384 recomputed pairs -> 16,385: blocks bound memory; every pair is recomputed once "
        "whatever the block (blocks of 1 and 2 are tested).",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_6": "`np.diff(d, axis=1)` -> the default axis, -1: the same on 2-D.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_8":
        "`diff <= tol` -> `diff < tol`: differs only for a float32 difference exactly equal to the bound, which "
        "is a doubled worst case (Higham's gamma_D, times 2) that rounding never attains; no input can reach it.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_32":
        "`in_run[:, 1:] |= close` -> `=`: `in_run` is all False just before, so the two are the same.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_69":
        "`in_run &= mixed` -> `in_run = mixed`: a mixed run has two or more members, all linked by close "
        "differences, so it is already inside `in_run`; runs behind the first k that it adds are recomputed "
        "but stay behind (the sort is by run first), and the first k are returned.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_75":
        "the early return when nothing is marked, `== 0` -> `== 1`: marked positions come in whole runs of two "
        "or more, so exactly one is never marked; with none marked the remaining code sorts nothing and "
        "returns the same first k.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_82":
        "the loop's step dropped: blocks overlap and pairs are recomputed again with the same values.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_98": "`np.lexsort(..., axis=-1)` -> the default axis, -1.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_99": "`axis=-1` -> `axis=+1` on 2-D keys: the same axis.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_108":
        "`np.take_along_axis(..., axis=1)` on 2-D arrays -> the default axis, -1 in NumPy >= 2.3.",
    "hdml_jax.evaluation._exact.x__rerank_close__mutmut_116": "the same as mutant 108, for the distances.",
    "hdml_jax.evaluation._exact.x__search__mutmut_7":
        "the query itself counted as available when excluded: the spare candidates may then reach the whole "
        "gallery, the query at +inf included, and the check for neighbours beyond the candidates is skipped "
        "because none are left out; the query (+inf) is never among the first k <= N - 1, and `top_k` ranks "
        "it before the padding rows (+inf too) by its smaller index, so the candidates are real rows.",
    "hdml_jax.evaluation._exact.x__search__mutmut_30":
        "one more spare candidate (`k + 9`): spares only decide how often a row is ranked against the whole "
        "gallery in float64 (the check for neighbours beyond the candidates keeps any count exact).",
    "hdml_jax.evaluation._exact.x__search__mutmut_32": "the same as mutant 30 (`k // 5` spares: fewer).",
    "hdml_jax.evaluation._exact.x__search__mutmut_38":
        "`_conditioned(queries, gallery)` when the query is excluded: every caller then passes the queries "
        "themselves as the gallery (the same array).",
    "hdml_jax.evaluation._exact.x__search__mutmut_43": "the same as mutant 38, for the float64 copy.",
    "hdml_jax.evaluation._exact.x__search__mutmut_41": "`astype(None)`: NumPy's default dtype is float64, as written.",
    "hdml_jax.evaluation._exact.x__search__mutmut_45": "the same as mutant 41.",
    "hdml_jax.evaluation._exact.x__search__mutmut_81": "the same as mutant 41.",
    "hdml_jax.evaluation._exact.x__search__mutmut_105": "the same as mutant 41 (`np.empty(shape, None)`).",
    "hdml_jax.evaluation._exact.x__search__mutmut_107": "the same as mutant 105 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__search__mutmut_62":
        "the padding rows built in float64: concatenated with the float32 rows and sent to the device, they "
        "become float32 (JAX's default, x64 off); with x64 on the search would run in float64 and stay exact.",
    "hdml_jax.evaluation._exact.x__search__mutmut_64": "the same as mutant 62 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__search__mutmut_71": "the same as mutant 62, for the padding's +inf norms.",
    "hdml_jax.evaluation._exact.x__search__mutmut_74": "the same as mutant 71 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__search__mutmut_126": "the same as mutant 62, for the last chunk's padding rows.",
    "hdml_jax.evaluation._exact.x__search__mutmut_128": "the same as mutant 126 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__search__mutmut_89":
        "the error bound's factor D + 4 -> D + 5: a looser bound only marks more runs for the float64 "
        "re-ranking (cost, not result; a bound 2^44 times looser is caught by the no-float64-work test).",
    "hdml_jax.evaluation._exact.x__search__mutmut_122":
        "`< chunk_size` -> `<=`: a full chunk is then padded with zero rows, which is no change.",
    "hdml_jax.evaluation._exact.x__search__mutmut_150":
        "a fetched chunk's slot set to `\"\"` instead of None: either drops the reference to the device result.",
    "hdml_jax.evaluation._exact.x__search__mutmut_213":
        "the relevance mask inverted (`!=` for `==`): it is read only to find runs that mix relevant and "
        "irrelevant neighbours, and a run mixes both under the mask or under its complement alike.",
    "hdml_jax.evaluation._exact.x__search__mutmut_175":
        "`np.asarray(d32, None)`: the device's float32 values, then promoted to float64 by the float64 `q_sq` "
        "added to them: the same float64 values as the explicit conversion.",
    "hdml_jax.evaluation._exact.x__search__mutmut_177": "the same as mutant 175 (dtype dropped).",
    "hdml_jax.evaluation._exact.x__search__mutmut_205":
        "`np.zeros(n, None)` (float64 zeros) for 'no row needs the whole gallery': read only by "
        "`np.flatnonzero`, which finds no row either way.",
    "hdml_jax.evaluation._exact.x__search__mutmut_207": "the same as mutant 205 (dtype dropped).",
    "experiments.selection.xǁBestCheckpointǁrestore__mutmut_5":
        "the best checkpoint restored at the manager's latest step instead of `best.json`'s: the manager keeps "
        "one checkpoint (`max_to_keep=1`), and `best.json` is written only after that checkpoint is saved, "
        "so its step is the manager's only (latest) one.",
    "experiments.selection.xǁBestCheckpointǁrestore__mutmut_8": "the same as mutant 5 (step dropped).",
    "hdml_jax.evaluation._kmeans.x__d2_to__mutmut_4":
        "`precision=HIGHEST` -> default: the same on CPU, where the tests run (as `distances`' mutant 48).",
    "hdml_jax.evaluation._kmeans.x__d2_to__mutmut_7": "the same as mutant 4 (precision dropped).",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_7":
        "the default `chunk_size` 2048 -> 2049: points per device call bound memory only (chunk sizes are "
        "tested to give the same clustering).",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_64":
        "the variance over all entries instead of the mean per-feature variance: `x` is centred per feature "
        "just before (`_conditioned`), so both equal the mean of the squares.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_66": "the same as mutant 64 (axis dropped).",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_67":
        "the tolerance's variance computed in float32 rather than float64: the same to float32 rounding "
        "(~1e-7 relative) of a threshold on the centre shift.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_78":
        "`generate_state(2)[0]` for `generate_state(1)[0]`: a SeedSequence's first word does not depend on how "
        "many are asked for (checked), so the restarts' seeds are the same.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_86":
        "Forgy's `replace=False` -> None: NumPy's `choice` reads `replace` for truth, and None is false.",
    "hdml_jax.evaluation._metrics.x_contingency__mutmut_28":
        "the code width `max + 1` -> `max + 2`: any width above the largest cluster id encodes (class, cluster) "
        "pairs uniquely and decodes them the same.",
    "hdml_jax.evaluation._metrics.x__entropy__mutmut_3":
        "`counts > 0` -> `>= 0`: the counts are `np.bincount` of `np.unique`'s inverse, so none is zero.",
    "hdml_jax.evaluation._metrics.x_normalized_mutual_information__mutmut_27":
        "`astype(None)`: NumPy's default dtype is float64, as written.",
    "hdml_jax.evaluation._select.x__smallest__mutmut_58":
        "`jnp.take_along_axis(..., axis=1)` on 2-D arrays -> the default axis, -1.",
    "hdml_jax.evaluation._exact.x__search__mutmut_194":
        "the check for neighbours beyond the candidates also made when the candidates are the whole gallery: a "
        "row it flags is ranked against the whole gallery in float64, which is what its candidates already "
        "were (cost, not result).",
    "hdml_jax.evaluation._exact.x__search__mutmut_203": "the same as mutant 194 (`kc <= available`).",
    "hdml_jax.evaluation._exact.x__search__mutmut_197":
        "the check compares an earlier candidate (`kc - 2`), so it flags at least the rows it flagged before: "
        "more rows ranked against the whole gallery in float64 (cost, not result).",
    "hdml_jax.evaluation._exact.x__search__mutmut_198": "the same as mutant 197, from a later neighbour (`k + 1`).",
    "hdml_jax.evaluation._exact.x__search__mutmut_202": "the same as mutant 197, with a looser margin (`3 * t`).",
    "hdml_jax.evaluation._exact.x__search__mutmut_200":
        "`<= 2 * t` -> `< 2 * t`: differs only for a difference exactly equal to the doubled worst-case bound "
        "(as `_rerank_close`'s mutant 8).",
    "hdml_jax.evaluation._exact.x__search__mutmut_263": "einsum subscripts in upper case: the same contraction.",
    "hdml_jax.evaluation._exact.x__search__mutmut_264":
        "`np.errstate(over=None)`: NumPy's default then prints an overflow warning before the ValueError the "
        "function raises for that case (tested); nothing else changes.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_159":
        "`jnp.asarray(centers, None)`: the initial centres are rows of the float32 conditioned data already.",
    "hdml_jax.evaluation._kmeans.x__lloyd__mutmut_4":
        "the iteration counter's initial 0 -> 1: the loop always runs (`max_iter >= 1` is checked) and sets it.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_161": "the same as mutant 159 (dtype dropped: the rows are float32).",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_174":
        "the centres mapped back in float32 instead of float64 before adding the float64 centre: the factor is a "
        "power of two (exact in float32 within its range) and the sum is float64 either way; the result is "
        "float32.",
    "hdml_jax.evaluation._kmeans.x_kmeans__mutmut_176": "the same as mutant 174 (dtype dropped).",
    "experiments.run_config.x_check_run_config__mutmut_40":
        "the placeholder for a key the run's config lacks, `'<absent>'` -> `'XX<absent>XX'`, in the comparison "
        "only (the diff shown keeps `'<absent>'`): a key present on one side differs from either placeholder "
        "unless a config value is that very string.",
    "experiments.run_config.x_check_run_config__mutmut_41": "the same as mutant 40, with `'<ABSENT>'`.",
    "experiments.run_config.x_check_run_config__mutmut_47": "the same as mutant 40, for a key the current config lacks.",
    "experiments.run_config.x_check_run_config__mutmut_48": "the same as mutant 47, with `'<ABSENT>'`.",
    "experiments.checkpoints.x_non_finite_leaves__mutmut_11":
        "`isinstance(x, jax.Array) or True`: the flags come out of a jitted function, so every leaf is a "
        "`jax.Array` already.",
    "experiments.checkpoints.x_non_finite_leaves__mutmut_12":
        "`addressable_data(None)` for `addressable_data(0)`: each flag is one scalar, the same on every device "
        "that holds it (replicated, or a single-device array, which returns itself for any index).",
    "experiments.checkpoints.x_non_finite_leaves__mutmut_13": "the same as mutant 12, with index 1.",
    "hdml_jax.evaluation._checks.x__as_embeddings__mutmut_26":
        "`astype(..., copy=None)`: None is false, so a float32 input is returned uncopied, as with `copy=False`.",
    "hdml_jax.evaluation._device.x_bucket__mutmut_13":
        "`size & (size - 1)` -> `size & (size - 2)`: on the sizes the loop visits (8, 12, 16, 24, ...: powers of "
        "two from 8, and three times a power of two from 12) both are zero exactly at the powers of two.",
    "hdml_jax.evaluation._exact.x__conditioned__mutmut_13":
        "`gallery.astype(None)`: NumPy's default dtype is float64, as written.",
    "hdml_jax.evaluation._exact.x__conditioned__mutmut_32":
        "`unit` 2.0 instead of 1.0 when every point is at the centre: the conditioned values are all zero "
        "either way, and so are the distances scaled back by `unit ** 2`.",
    "hdml_jax.evaluation._exact.x__conditioned__mutmut_3": "`astype(None)`: NumPy's default dtype is float64, as written.",
    "hdml_jax.evaluation._exact.x__conditioned__mutmut_7": "the same as mutant 3.",
    "hdml_jax.evaluation._kmeans.x__lloyd__mutmut_32":
        "the empty-cluster relocation called whenever a cluster is non-empty: `_relocate_empty` returns the "
        "centres unchanged when none is empty, and relocates the same clusters when some are.",
    "hdml_jax.evaluation._kmeans.x__lloyd__mutmut_63":
        "`shift <= tol_abs` -> `<`: differs only for a shift exactly equal to the threshold; with tol = 0 a zero "
        "shift means the labels did not change, which stops the loop at the same iteration.",
    "hdml_jax.evaluation._exact.x__conditioned__mutmut_9":
        "the gallery conditioned separately even when it is the queries: the same array, the same values.",
    "hdml_jax.head.x_hdml_objective__mutmut_27":
        "`decay_params` None passed on instead of `{}`: None is an empty pytree, as `{}` is, so the decay is the same.",
}

# Mutant name -> why a survivor that is neither killed nor equivalent is left (the report prints it under the
# mutant's diff; the score counts it as a survivor).
SURVIVOR_NOTES: dict[str, str] = {
    "experiments.checkpoints.x_non_finite_leaves__mutmut_10":
        "fetches the whole flag arrays with `device_get` instead of the local shard: the same in one process "
        "(every test here), but in a multi-host run a flag not fully addressable from one process cannot be "
        "fetched whole. Only a multi-process run could kill it.",
    "hdml_jax.evaluation._exact.x__search__mutmut_93":
        "halves the float32 error bound that decides which close calls are re-ranked in float64. The bound is "
        "Higham's worst case for the dot products, doubled; the halved one is no longer a proven bound (the "
        "worst case of `|g|^2 - 2 q.g` needs about `D * 2^-23 * (|q|^2 + 2 max|g|^2)`), so the mutant is not "
        "equivalent. But real float32 matmul errors grow like sqrt(D), far below the worst case: no input was "
        "found that it misorders (40 near-tie sets, D 8-256, grids 2^-4 to 2^-10, "
        "`tests/unit/evaluation/test_search.py::ErrorBoundTest`'s data among them).",
}

# Mutant name -> why its timeout is a detection: the mutant makes the tests hang (an endless loop) or so
# slow that they cannot finish; each was looked at, and the report counts it as killed.
HANGS: dict[str, str] = {
    "experiments.loop.x_run_loop__mutmut_35":
        "the loop's checkpoint saved from None (an empty tree): applied by hand, "
        "`test_checkpoints_every_n_steps_and_at_the_final_step` fails in seconds; under mutmut the first test "
        "to run stalled in orbax until the timeout.",
    "hdml_jax.evaluation._exact.x__search__mutmut_116":
        "the chunk loop's step dropped (`range(0, n)`): every query row starts a chunk, so the search makes N "
        "device calls of `chunk_size` rows instead of N / chunk_size; the tests time out.",
    "hdml_jax.evaluation._device.x_bucket__mutmut_10":
        "`size + half` -> `size - half`: from 8 the size falls to 1 and stays there, so any n > 8 loops forever.",
    "hdml_jax.evaluation._device.x_bucket__mutmut_16":
        "`size + size // 3` -> `size - size // 3`: 8 -> 12 -> 8 -> ...: any n > 12 loops forever.",
    "hdml_jax.data.samplers.xǁMPerClassSamplerǁepoch_of__mutmut_9":
        "`step -= n` -> `step = n`: every step past the first epoch loops forever.",
    "hdml_jax.data.samplers.xǁMPerClassSamplerǁepoch_of__mutmut_10":
        "`step -= n` -> `step += n`: the same endless loop.",
}


# Functions changed since their mutants were audited (issue #14's host kNN engine). mutmut numbers a
# function's mutants in order, so notes keyed by the old numbers no longer name the same mutants: they are
# set aside (kept in ``SET_ASIDE``, never applied) until these functions are run and audited again.
REAUDIT = tuple(f"hdml_jax.evaluation.{module}.x_{name}__" for module, name in (
    ("_exact", "_search"), ("_exact", "_conditioned"), ("_kmeans", "_lloyd"), ("_kmeans", "kmeans"),
    ("_exact", "_distances64"), ("_exact", "nearest_neighbors"), ("_api", "evaluate"),
    ("_api", "evaluate_query_gallery"), ("_api", "cluster_metrics"))) + (
    # Changed by the redesign (issue #25): the selection helper's return order, the construction shared
    # by the train state and the own-loop head, the step's head, the renamed selection name.
    "hdml_jax.evaluation._select.x__smallest__", "hdml_jax.train_state.x_create_train_state__",
    "hdml_jax.head.x_init_hdml_head__", "hdml_jax.train_step.x_make_train_step__",
    "experiments.selection.x_selection_name__")
SET_ASIDE: dict[str, str] = {}
for _notes in (EQUIVALENT, SURVIVOR_NOTES, HANGS):
  for _name in [n for n in _notes if n.startswith(REAUDIT)]:
    SET_ASIDE[_name] = _notes.pop(_name)

# Appended to the workdir's conftest.py: under a mutant, run the covering tests fastest first (by the
# durations mutmut measured in its stats run), so that with ``-x`` a killed mutant stops early.
_FASTEST_FIRST = """

def pytest_collection_modifyitems(session, config, items):
  import json
  if not os.environ.get("MUTANT_UNDER_TEST") or not os.path.exists("mutmut-stats.json"):
    return
  with open("mutmut-stats.json") as f:
    duration = json.load(f).get("duration_by_test", {})
  items.sort(key=lambda item: duration.get(item.nodeid, float("inf")))
"""


def _changed(base: str) -> set[str]:
  out = subprocess.run(["git", "diff", "--name-only", base, "--"], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.split()
  return set(out)


def _paths(module: str) -> list[str]:
  """The files of a core module: ``hdml_jax/<module>.py``, or every module of the package ``hdml_jax/<module>/``."""
  folder = os.path.join(REPO, "hdml_jax", module)
  if os.path.isdir(folder):
    return sorted(f"hdml_jax/{module}/{name}" for name in os.listdir(folder) if name.endswith(".py"))
  return [f"hdml_jax/{module}.py"]


def _targets(args) -> dict[str, list[str]]:
  targets = {path: tests for m, tests in CORE.items() for path in _paths(m)}
  if args.with_application:
    targets.update(APPLICATION)
  if args.modules:
    wanted = {m.strip() for m in args.modules.split(",") if m.strip()} - {"none"}
    unknown = wanted - set(CORE)
    if unknown:
      sys.exit(f"mutation: unknown module(s) {sorted(unknown)}; core modules: {', '.join(CORE)}")
    targets = {path: CORE[m] for m in wanted for path in _paths(m)}
    if args.with_application:
      targets.update(APPLICATION)
  if args.changed:
    changed = _changed(args.changed)
    targets = {path: tests for path, tests in targets.items() if path in changed}
  return targets


def _selected(args, targets: dict[str, list[str]]) -> list[str]:
  """The mutant names (fnmatch patterns) given to ``mutmut run``: those asked for, else, when the application
  is mutated, every mutant of the core modules and the application's ``APPLICATION_FUNCTIONS``."""
  if args.mutants:
    return list(args.mutants)
  if not any(path in APPLICATION for path in targets):
    return []
  core = [path[:-len(".py")].replace("/", ".") + ".*" for path in targets if path not in APPLICATION]
  return core + list(APPLICATION_FUNCTIONS)


def _write_config(workdir: str, targets: dict[str, list[str]]) -> None:
  tests = sorted({t for ts in targets.values() for t in ts})
  lines = ["[mutmut]",
           "source_paths=hdml_jax/" + ("\n    experiments/" if any(p.startswith("experiments/") for p in targets)
                                       else ""),
           "only_mutate=" + "\n    ".join(sorted(targets)),
           "also_copy=conftest.py\n    experiments/\n    README.md",
           "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
           # No doctests and no cache: only the selected test files, stopping at the first failure.
           "pytest_add_cli_args=-p no:cacheprovider -x -q --no-header -o addopts=",
           # JAX is multithreaded: a plain fork of a process that ran JAX can deadlock (and would reuse
           # compiled functions traced without the mutant), so every mutant starts from a fresh server
           # that has imported nothing.
           "process_isolation=forkserver",
           "forkserver_warmup=none",
           ""]
  with open(os.path.join(workdir, "setup.cfg"), "w") as f:
    f.write("\n".join(lines))


def _copy_checkout(workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  for name in ("hdml_jax", "experiments", "tests"):
    dst = os.path.join(workdir, name)
    if os.path.exists(dst):
      shutil.rmtree(dst)
    shutil.copytree(os.path.join(REPO, name), dst, ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("conftest.py", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), workdir)
  with open(os.path.join(workdir, "conftest.py"), "a") as f:
    f.write(_FASTEST_FIRST)
  # mutmut runs the tests in <workdir>/mutants, whose parent must hold the checkout's sibling `shared/`
  # (the photographs some tests read), as the checkout's parent does.
  shared, link = os.path.join(os.path.dirname(REPO), "shared"), os.path.join(workdir, "shared")
  if os.path.isdir(shared) and not os.path.lexists(link):
    os.symlink(shared, link)


def _results(workdir: str) -> dict[str, str]:
  out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=workdir, capture_output=True, text=True)
  if out.returncode:
    out = subprocess.run(["mutmut", "results"], cwd=workdir, capture_output=True, text=True, check=True)
  status = {}
  for line in out.stdout.splitlines():
    if ":" in line and "__mutmut_" in line:
      name, state = line.strip().rsplit(":", 1)
      status[name.strip()] = state.strip()
  return status


INTERRUPTED = "check was interrupted by user"


def _count_import_failures(workdir: str, status: dict[str, str], targets: dict[str, list[str]]) -> None:
  """Marks killed the mutants that break the tests' collection, which mutmut reports as interrupted.

  pytest exits with code 2 both when interrupted and when a test module fails to import, and a mutant can
  make the import fail (a config dataclass evaluated as a default argument that now raises). Each mutant
  mutmut calls interrupted is collected again under that mutant: if collection fails it is caught, and it
  is marked ``killed (collection)``; otherwise it keeps its status (not run).
  """
  for name, state in sorted(status.items()):
    if state != INTERRUPTED:
      continue
    module_path = name.rsplit(".", 1)[0].replace(".", "/") + ".py"
    tests = targets.get(module_path)
    if not tests:
      continue
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *tests],
                          cwd=os.path.join(workdir, "mutants"), capture_output=True, text=True,
                          env={**os.environ, "MUTANT_UNDER_TEST": name})
    if proc.returncode == 2 and "error" in proc.stdout.lower():
      status[name] = "killed (collection)"


def _report(workdir: str, status: dict[str, str], path: str) -> float:
  by_module: dict[str, dict[str, int]] = {}
  survivors = []
  for name, state in sorted(status.items()):
    module = name.rsplit(".", 1)[0]   # "hdml_jax.hardness" of "hdml_jax.hardness.x_f__mutmut_3"
    counts = by_module.setdefault(module, {"killed": 0, "survived": 0, "timeout": 0, "equivalent": 0,
                                           "other": 0, "collection": 0})
    if name in EQUIVALENT:
      counts["equivalent"] += 1
    elif state in ("killed", "killed (collection)") or (state == "timeout" and name in HANGS):
      counts["killed"] += 1
      counts["collection"] += state == "killed (collection)"
    elif state in ("survived", "timeout"):
      counts[state] += 1
      survivors.append(name)
    else:
      counts["other"] += 1
  lines = ["# Mutation testing report", "",
           "| module | killed | timeout | survived | equivalent | not run / other | score |",
           "|---|---|---|---|---|---|---|"]
  total_k = total_s = 0
  for module, c in by_module.items():
    k, s = c["killed"], c["survived"] + c["timeout"]
    total_k, total_s = total_k + k, total_s + s
    score = f"{100 * k / (k + s):.1f} %" if k + s else "-"
    killed = f"{c['killed']} ({c['collection']} at collection)" if c["collection"] else str(c["killed"])
    lines.append(f"| {module} | {killed} | {c['timeout']} | {c['survived']} | {c['equivalent']} | {c['other']} | "
                 f"{score} |")
  overall = total_k / (total_k + total_s) if total_k + total_s else float("nan")
  lines += ["", f"Overall: {100 * overall:.1f} % of non-equivalent mutants killed "
            f"({total_k} of {total_k + total_s}).", "",
            "\"at collection\": the mutant makes a test module fail to import (pytest exits 2, which mutmut "
            "reports as interrupted); each was collected again under the mutant to check.", "",
            "## Survivors and timeouts", ""]
  for name in survivors:
    diff = subprocess.run(["mutmut", "show", name], cwd=workdir, capture_output=True, text=True).stdout
    lines += [f"### {name}", "", "```diff", diff.strip(), "```", ""]
    if name in SURVIVOR_NOTES:
      lines += [f"Left: {SURVIVOR_NOTES[name]}", ""]
  lines += ["## Timeouts counted as killed (looked at)", ""] + [f"* `{k}`: {v}" for k, v in sorted(HANGS.items())]
  if EQUIVALENT:
    lines += ["", "## Equivalent mutants", ""] + [f"* `{k}`: {v}" for k, v in sorted(EQUIVALENT.items())]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return overall


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default=os.path.join("/tmp", "hdml_mutation"))
  ap.add_argument("--modules", default="",
                  help=f"comma-separated subset of: {', '.join(CORE)}; 'none' with --with_application")
  ap.add_argument("--changed", default="", help="only modules changed since this git revision")
  ap.add_argument("--with_application", action="store_true",
                  help="also mutate the training loop's resume and checkpoint selection (APPLICATION_FUNCTIONS "
                       "of experiments/train.py and experiments/checkpoints.py)")
  ap.add_argument("--max_children", type=int, default=os.cpu_count() or 1)
  ap.add_argument("--report", default="mutation_report.md")
  ap.add_argument("mutants", nargs="*", help="only these mutant names (mutmut's)")
  args = ap.parse_args(argv)
  if shutil.which("mutmut") is None:
    sys.exit("mutation: mutmut is not installed (python3 -m pip install mutmut).")
  targets = _targets(args)
  if not targets:
    sys.exit("mutation: no core module to mutate (nothing changed?).")
  workdir = os.path.abspath(args.workdir)
  _copy_checkout(workdir)
  _write_config(workdir, targets)
  print(f"mutating {', '.join(sorted(targets))} in {workdir}", flush=True)
  proc = subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *_selected(args, targets)],
                        cwd=workdir)
  if proc.returncode:
    sys.exit(f"mutation: mutmut run failed (exit {proc.returncode}); see {workdir}")
  status = _results(workdir)
  names = _selected(argparse.Namespace(**{**vars(args), "mutants": []}), targets)
  if names:   # the report covers the application's selected functions, not the rest of its files
    status = {n: st for n, st in status.items() if any(fnmatch.fnmatch(n, pat) for pat in names)}
  _count_import_failures(workdir, status, targets)
  overall = _report(workdir, status, os.path.abspath(args.report))
  print(f"score {100 * overall:.1f} %; report: {os.path.abspath(args.report)}")


if __name__ == "__main__":
  main()
