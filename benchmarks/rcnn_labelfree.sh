#!/usr/bin/env bash
# Issue 29's evidence run (one seed, not the study): a Mask R-CNN R50 teacher on the 64² mini
# digits, then an R18 student supervised and one label-free (the same 4,000 training images as
# an unlabeled folder, no annotation read) at the same schedule, with box and mask AP on
# mini_digits64_val. ~75 min on 2 CPU cores. Results: docs/BENCHMARKS.md §13.
#
#   bash benchmarks/rcnn_labelfree.sh [OUT]     # OUT defaults to output/rcnn_labelfree
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-output/rcnn_labelfree}
COMMON=(DATASETS.TEST "('mini_digits64_val',)" INPUT.MIN_SIZE_TRAIN "(64,)" INPUT.MAX_SIZE_TRAIN 64
        INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64 MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0
        SOLVER.IMS_PER_BATCH 8 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 SOLVER.CHECKPOINT_PERIOD 100000 SEED 0)
STUDENT=(SOLVER.MAX_ITER 400 SOLVER.STEPS "(300,)" SOLVER.BASE_LR 0.02)
mkdir -p "$OUT"
if [ ! -f "$OUT/teacher/model_final.pth" ]; then
  "$PY" tools/train_net.py --config-file configs/mini_digits/mask_rcnn_R50_FPN.yaml "${COMMON[@]}" \
    DATASETS.TRAIN "('mini_digits64_train',)" SOLVER.MAX_ITER 800 SOLVER.STEPS "(600,)" SOLVER.BASE_LR 0.02 \
    OUTPUT_DIR "$OUT/teacher" > "$OUT/teacher.out" 2>&1 \
    || { echo "ERROR: the teacher failed; see $OUT/teacher.out" >&2; exit 1; }
fi
# The two students side by side, one thread each.
OMP_NUM_THREADS=1 "$PY" tools/train_net.py --config-file configs/mini_digits/mask_rcnn_R18_FPN.yaml "${COMMON[@]}" \
  DATASETS.TRAIN "('mini_digits64_train',)" "${STUDENT[@]}" OUTPUT_DIR "$OUT/supervised" > "$OUT/supervised.out" 2>&1 &
OMP_NUM_THREADS=1 "$PY" tools/train_net.py --config-file configs/mini_digits/mgd_mask_rcnn_R50_R18_labelfree_train.yaml \
  "${COMMON[@]}" MGD.UNLABELED.FOLDERS "('digits64_images:datasets/mini_digits64/train',)" \
  DATASETS.TRAIN "('digits64_images',)" MGD.TEACHER.WEIGHTS "$OUT/teacher/model_final.pth" "${STUDENT[@]}" \
  OUTPUT_DIR "$OUT/labelfree" > "$OUT/labelfree.out" 2>&1 &
LABELFREE=$!
wait "$SUPERVISED" || { echo "ERROR: the supervised student failed; see $OUT/supervised.out" >&2; exit 1; }
wait "$LABELFREE" || { echo "ERROR: the label-free student failed; see $OUT/labelfree.out" >&2; exit 1; }
grep -h "copypaste" "$OUT"/{teacher,supervised,labelfree}/log.txt | tail -n 6
