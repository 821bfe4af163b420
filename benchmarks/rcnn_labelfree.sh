#!/usr/bin/env bash
# Issue 29's evidence run (one seed, not the study): a Mask R-CNN R50 teacher on the 64² mini
# digits, then an R18 student supervised and one label-free (the same training images through
# their registered unlabeled view, no annotation read) at the same schedule, with box and mask
# AP on the validation split. ~75 min on 2 CPU cores. Results: docs/BENCHMARKS.md §13.
#
#   bash benchmarks/rcnn_labelfree.sh [OUT]     # OUT defaults to output/rcnn_labelfree
#   DATA=mini_digits_tiny TEACHER_ITERS=2 STUDENT_ITERS=2 bash benchmarks/rcnn_labelfree.sh OUT  # smoke (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-output/rcnn_labelfree}
DATA=${DATA:-mini_digits64}
TEACHER_ITERS=${TEACHER_ITERS:-800}
STUDENT_ITERS=${STUDENT_ITERS:-400}
COMMON=(DATASETS.TEST "('${DATA}_val',)" INPUT.MIN_SIZE_TRAIN "(64,)" INPUT.MAX_SIZE_TRAIN 64
        INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64 MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0
        SOLVER.IMS_PER_BATCH 8 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 SOLVER.CHECKPOINT_PERIOD 100000 SEED 0
        SOLVER.BASE_LR 0.02)
STUDENT=(SOLVER.MAX_ITER "$STUDENT_ITERS" SOLVER.STEPS "($((STUDENT_ITERS * 3 / 4)),)")
mkdir -p "$OUT"
if [ ! -f "$OUT/teacher/model_final.pth" ]; then
  "$PY" tools/train_net.py --config-file configs/mini_digits/mask_rcnn_R50_FPN.yaml "${COMMON[@]}" \
    DATASETS.TRAIN "('${DATA}_train',)" SOLVER.MAX_ITER "$TEACHER_ITERS" SOLVER.STEPS "($((TEACHER_ITERS * 3 / 4)),)" \
    OUTPUT_DIR "$OUT/teacher" > "$OUT/teacher.out" 2>&1 \
    || { echo "ERROR: the teacher failed; see $OUT/teacher.out" >&2; exit 1; }
fi
# The two students side by side, one thread each.
OMP_NUM_THREADS=1 "$PY" tools/train_net.py --config-file configs/mini_digits/mask_rcnn_R18_FPN.yaml \
  "${COMMON[@]}" DATASETS.TRAIN "('${DATA}_train',)" "${STUDENT[@]}" \
  OUTPUT_DIR "$OUT/supervised" > "$OUT/supervised.out" 2>&1 &
SUPERVISED=$!
OMP_NUM_THREADS=1 "$PY" tools/train_net.py --config-file configs/mini_digits/mgd_mask_rcnn_R50_R18_labelfree_train.yaml \
  "${COMMON[@]}" DATASETS.TRAIN "('${DATA}_train_images',)" MGD.TEACHER.WEIGHTS "$OUT/teacher/model_final.pth" \
  "${STUDENT[@]}" OUTPUT_DIR "$OUT/labelfree" > "$OUT/labelfree.out" 2>&1 &
LABELFREE=$!
wait "$SUPERVISED" || { echo "ERROR: the supervised student failed; see $OUT/supervised.out" >&2; exit 1; }
wait "$LABELFREE" || { echo "ERROR: the label-free student failed; see $OUT/labelfree.out" >&2; exit 1; }
for run in teacher supervised labelfree; do
  echo "$run: $(grep -h -A2 'copypaste: Task: bbox' "$OUT/$run/log.txt" | tail -n 1 | sed 's/.*copypaste: //') (bbox)" \
       "$(grep -h -A2 'copypaste: Task: segm' "$OUT/$run/log.txt" | tail -n 1 | sed 's/.*copypaste: //') (segm)"
done
