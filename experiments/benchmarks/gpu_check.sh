#!/usr/bin/env bash
# One short run on a GPU machine (about 7 minutes on one H100, plus the start):
#   1. the machine and software versions;
#   2. the train-step benchmark at the paper's setting (GoogLeNet, 227 px,
#      batch 128, N-pair, HDML and baseline, float32 and bfloat16);
#   3. the torchvision cross-check of googlenet_bn (needs torch + torchvision);
#   4. the default training job end to end (digits, orbax checkpoints, grain);
#   5. evaluation time at CUB and SOP scale;
#   6. the train-step benchmark at the CPU configuration (small CNN, 64 px);
#   7. the paper path (issue #26), each in a fresh process: the input pipeline's
#      images/s from JPEG and from the decoded-image cache (paper_input), a short
#      paper-config run on an official-layout CUB tree made from cub100 split into
#      setup / train / evaluation against one forward pass over the test images
#      (paper_phases), and, in the time left (PAPER_FULL_S seconds, default 0:
#      skipped), the whole 8,000-step paper run, resumable in $PAPER_ROOT/full.
# Each stage has its own time limit, so one failure does not hide the others.
# Writes gpu_check.log and the benchmarks' JSON under $OUT (default gpu_out/).
#
#     bash experiments/benchmarks/gpu_check.sh                 # every stage
#     bash experiments/benchmarks/gpu_check.sh bench_googlenet # only stages whose name starts so
#     bash experiments/benchmarks/gpu_check.sh paper_          # the paper path only (about 6 minutes)
#     PAPER_FULL_S=480 bash experiments/benchmarks/gpu_check.sh paper_full
#
# The paper stages read CUB100 (default ../shared/data/cub100) and take toy sizes for
# tests on CPU: PAPER_STEPS, PAPER_BATCH, INPUT_ARGS (input_pipeline arguments) and
# PAPER_ARGS (--config.<key>=<value> overrides of every paper run), PAPER_FULL_ARGS (of the full run only).
#
# Needs jax with CUDA, flax, optax, chex, absl-py, orbax-checkpoint, scikit-learn,
# matplotlib, tqdm; for stage 4 also ml_collections, grain and tensorboardX.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ONLY=${1:-}
CUB100=${CUB100:-../shared/data/cub100}
PAPER_ROOT=${PAPER_ROOT:-/tmp/hdml_paper}
read -r -a PAPER_EXTRA <<< "${PAPER_ARGS:-}"
read -r -a FULL_EXTRA <<< "${PAPER_FULL_ARGS:-}"
read -r -a INPUT_EXTRA <<< "${INPUT_ARGS:---threads 8 --batches 40 --rounds 3 --sizes paper}"

stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  if [[ -n "$ONLY" && "$name" != "$ONLY"* ]]; then return; fi
  if [[ "$limit" -le 0 ]]; then echo "=== $name: skipped (no time given)" | tee -a "$LOG"; return; fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s" | tee -a "$LOG"
}

stage env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
  $PY -c 'import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version); \
print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, \"orbax\", o.__version__); \
print(jax.devices())'"

for dtype in float32 bfloat16; do
  stage bench_googlenet_$dtype 170 $PY -m experiments.benchmarks.train_step --backbone googlenet --image_size 227 \
    --batch 128 --embedding_dim 512 --losses npair --dtypes $dtype \
    --steps_per_round 20 --rounds 5 --out "$OUT/bench_googlenet_$dtype.json"
done

stage torchvision_crosscheck 60 $PY -m pytest -q -p no:cacheprovider tests/test_googlenet.py -k torchvision

stage main_default 100 $PY -m experiments.main --config experiments/configs/default.py \
  --workdir /tmp/hdml_gpu_default
cp /tmp/hdml_gpu_default/results.json "$OUT/main_default_results.json" 2>/dev/null

stage bench_evaluation 90 $PY -m experiments.benchmarks.evaluation --scales cub,sop --families evaluate \
  --out "$OUT/bench_evaluation.json"

stage bench_small_cnn 60 $PY -m experiments.benchmarks.train_step --steps_per_round 20 --rounds 5 \
  --out "$OUT/bench_small_cnn.json"

stage paper_input 300 $PY -m experiments.benchmarks.input_pipeline --images "$CUB100/images" \
  --tfds_data_dir "$PAPER_ROOT/input_tfds" "${INPUT_EXTRA[@]}" --out "$OUT/bench_input_pipeline.json"

stage paper_phases 420 $PY -m experiments.benchmarks.paper_run --root "$PAPER_ROOT" --source "$CUB100" \
  --steps "${PAPER_STEPS:-20}" --batch "${PAPER_BATCH:-128}" --out "$OUT/bench_paper_run.json" \
  --config.data_threads=8 "${PAPER_EXTRA[@]}"

# The whole run (resumable: a second call goes on from its last checkpoint), on the tree paper_phases made.
stage paper_full "${PAPER_FULL_S:-0}" $PY -m experiments.main --config experiments/configs/paper.py:cub,npair,hdml \
  --workdir "$PAPER_ROOT/full" --config.dataset.data_dir="$PAPER_ROOT/manual" \
  --config.dataset.tfds_data_dir="$PAPER_ROOT/tfds" --config.data_threads=8 "${PAPER_EXTRA[@]}" "${FULL_EXTRA[@]}"
cp "$PAPER_ROOT/full/results.json" "$OUT/paper_full_results.json" 2>/dev/null

grep -E "^(device|variant|npair|triplet|scale|cub|sop|results|round|one forward|paper|===)|R@1|recall@1" "$LOG" || true
