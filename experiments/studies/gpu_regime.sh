#!/usr/bin/env bash
# The regime study's pretrained-start comparison at the paper's setting, on one GPU:
# GoogLeNet (Caffe layout) at 227 px, N-pair batch 128 (P = 64), the reference's
# CUB hyper-parameters (embedding 256, metric lr 6e-5, generator 1e-2, classifier
# 1e-3, beta 5e3, weight decay 1e-3, l2 1.5e-2). No ImageNet weights exist on the
# machines of this project, so the backbone is first pretrained with softmax on
# the 50 training classes of cub100 (experiments.pretrain, one file per seed);
# then, for every seed, the N-pair baseline and HDML fine-tune from that same
# file for the same number of steps. Nothing is selected: every run reports its
# final step (selection.split=none; no class is held out, so all 50 train),
# which keeps the test classes out of every choice. Prints the regime table
# (mean ± std, paired difference HDML - baseline with a 95 % t interval).
#
#     bash experiments/studies/gpu_regime.sh                     # 3 seeds, 600 + 600 steps
#     SEEDS=0 STEPS=200 PRETRAIN_STEPS=200 bash experiments/studies/gpu_regime.sh
#     bash experiments/studies/gpu_regime.sh --config.model.backbone=tiny ...   # extra overrides (tests)
#
# Writes under $OUT (default gpu_out/): gpu_regime.log, the table and regime.json;
# the runs go to $WORKDIR (default runs/gpu_regime), so a second call resumes.
set -u
OUT=${OUT:-gpu_out}
WORKDIR=${WORKDIR:-runs/gpu_regime}
. "$(dirname "$0")/gpu_common.sh"
gpu_start "$OUT/gpu_regime.log"
$PY -m experiments.studies.cub100_tables --workdir "$WORKDIR" --table regime --regimes pretrained --losses npair \
  --seeds "${SEEDS:-0,1,2}" --num_steps "${STEPS:-600}" --pretrain_steps "${PRETRAIN_STEPS:-600}" \
  --pretrain_lr "${PRETRAIN_LR:-1e-3}" --metric_lr "${METRIC_LR:-6e-5}" \
  --config.model.backbone=googlenet "--config.model.backbone_kwargs={}" --config.model.embedding_dim=256 \
  --config.dataset.resize=256 --config.dataset.crop=227 --config.dataset.preprocess=paper \
  --config.batch_size=128 --config.dataset.num_val_classes=0 --config.selection.split=none \
  --config.hdml.beta=5e3 --config.hdml.weight_decay=1e-3 --config.hdml.l2_reg=1.5e-2 \
  --config.eval.batch_size=256 --config.data_threads=16 "$@" >>"$OUT/gpu_regime.log" 2>&1
rc=$?
cp "$WORKDIR/table_regime.md" "$WORKDIR/regime.json" "$OUT/" 2>/dev/null
echo "exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/gpu_regime.log"
cat "$OUT/table_regime.md" 2>/dev/null
exit $rc
