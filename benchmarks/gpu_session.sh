#!/usr/bin/env bash
# One GPU session's measurements (docs/BENCHMARKS.md), from the repository root on a machine
# with CUDA and no network, with the wheelhouse of scripts/wheelhouse.sh in .whl/:
#   OUT=/some/folder bash benchmarks/gpu_session.sh [SECONDS]
# Phase 1 (until T1): the R50 teacher trains (checkpoints every 500 iterations; the last one
#   teaches when time is up) while the foreground counts synchronisations per step, trains
#   MGD with and without AMP, and measures the update cost.
# Phase 2: students side by side from that teacher, one seed: R18 baseline, MGD-AMP, the
#   DistPro pathways with fixed and learned weights, and label-free students (training
#   images, pool by score, pool uniform); the test suite runs beside them.
# DRYRUN=1 runs the same plan on the CPU with tiny data and a few iterations.
set -u
BUDGET="${1:-560}"; T1="${T1:-270}"
START=$(date +%s)
OUT="${OUT:?set OUT}"
export PYTHONUNBUFFERED=1 MGD_DATASETS="${MGD_DATASETS:-/tmp/mgd_data}" PYTHONPATH="/tmp/site:$PWD"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
R=/tmp/runs; mkdir -p $R
TRAIN=mini_digits_train; POOL=mini_digits_pool; IMAGES=mini_digits_train_images
TEACHER_ITERS=1500; STUDENT_ITERS=800; EVAL=200; AMP_ITERS=200; WORKERS=2; DEV=(); PY=python3
if [ "${DRYRUN:-0}" = 1 ]; then
  TRAIN=mini_digits_tiny_train; POOL=mini_digits_pool_tiny; IMAGES=mini_digits_tiny_train_images
  TEACHER_ITERS=4; STUDENT_ITERS=4; EVAL=2; AMP_ITERS=2; WORKERS=0; PY="${PYTHON:-python3}"
  DEV=(MODEL.DEVICE cpu SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(64,)" INPUT.MAX_SIZE_TRAIN 64
       INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64 DATASETS.TEST "('mini_digits_tiny_val',)" MGD.UPDATE.NUM_BATCHES 2)
else
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v detectron2) \
    && $PY -m zipfile -e .whl/sal_detectron2-*.whl /tmp/site || { echo "install failed"; exit 1; }
  # OR-Tools needs a protobuf the machine may not have: without it the solver falls back to scipy.
  $PY -c "from ortools.graph.python import min_cost_flow" 2>/dev/null || rm -rf /tmp/site/ortools*
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt" 2>&1
fi
$PY - "$TRAIN" "$POOL" <<'PY' || exit 1
import sys, torch, mgd_det.data as d
from detectron2.modeling import build_model
from mgd_det.config import setup_cfg
from mgd_det.data.pool import ensure_pool
for name in (sys.argv[1], sys.argv[1].replace("train", "val")):
    d.ensure_generated(name)
ensure_pool(sys.argv[2])
torch.manual_seed(0)
cfg = setup_cfg("configs/mini_digits/retinanet_R50_FPN.yaml", ["MODEL.DEVICE", "cpu"])
torch.save({"model": build_model(cfg).state_dict()}, "/tmp/teacher_random_R50.pth")
PY
train() {  # name config opts... (in the background, log in $R/name.log)
  local name=$1 cfg=$2; shift 2
  setsid nohup $PY tools/train_net.py --config-file "$cfg" OUTPUT_DIR $R/$name DATALOADER.NUM_WORKERS $WORKERS \
    DATASETS.TRAIN "('$TRAIN',)" "${DEV[@]}" "$@" > $R/$name.log 2>&1 &
}
# ---------------------------------------------------------------- phase 1
train teacher_R50 configs/mini_digits/retinanet_R50_FPN.yaml SOLVER.MAX_ITER $TEACHER_ITERS SOLVER.BASE_LR 0.02 \
  SOLVER.STEPS "($((TEACHER_ITERS*2/3)),$((TEACHER_ITERS*8/9)))" SOLVER.CHECKPOINT_PERIOD 500 TEST.EVAL_PERIOD 1000
$PY -m benchmarks.sync_count --out "$OUT/sync_counts.json" "${DEV[@]}" > $R/sync.log 2>&1
for amp in False True; do
  [ "${DRYRUN:-0}" = 1 ] && [ $amp = True ] && continue  # AMP needs CUDA
  timeout 100 $PY tools/train_net.py --config-file configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml OUTPUT_DIR $R/amp_$amp \
    SOLVER.AMP.ENABLED $amp SOLVER.MAX_ITER $AMP_ITERS MGD.TEACHER.WEIGHTS /tmp/teacher_random_R50.pth DATASETS.TEST "()" \
    DATASETS.TRAIN "('$TRAIN',)" DATALOADER.NUM_WORKERS $WORKERS "${DEV[@]}" > $R/amp_$amp.log 2>&1
done
[ "${DRYRUN:-0}" = 1 ] || timeout $(( T1 - ($(date +%s) - START) - 10 )) $PY tools/benchmark.py --out-dir $R/bench \
  --only update --update-batches 20x16x128 --reps 3 --warmup 1 > $R/bench.log 2>&1
while [ $(( $(date +%s) - START )) -lt $T1 ] && pgrep -f "OUTPUT_DIR $R/teacher_R50 " >/dev/null; do sleep 2; done
pkill -f "OUTPUT_DIR $R/teacher_R50 "; sleep 2
TW=$R/teacher_R50/model_final.pth; [ -f $TW ] || TW=$(ls -t $R/teacher_R50/model_*.pth | head -1)
echo "teacher weights: $TW" | tee $R/teacher_used.txt
# ---------------------------------------------------------------- phase 2
S=(SOLVER.MAX_ITER $STUDENT_ITERS SOLVER.BASE_LR 0.02 SOLVER.STEPS "($((STUDENT_ITERS*2/3)),$((STUDENT_ITERS*8/9)))"
   TEST.EVAL_PERIOD $EVAL SOLVER.CHECKPOINT_PERIOD 100000 SEED 0)
T=(MGD.TEACHER.WEIGHTS $TW)
C=configs/mini_digits
train baseline $C/retinanet_R18_FPN.yaml "${S[@]}"
train AMP $C/mgd_retinanet_R50_R18_AMP.yaml "${S[@]}" "${T[@]}"
train DP_fixed $C/mgd_retinanet_R50_R18_distpro.yaml MGD.WEIGHTING constant "${S[@]}" "${T[@]}"
train DP_learned $C/mgd_retinanet_R50_R18_distpro.yaml "${S[@]}" "${T[@]}"
train LF_train $C/mgd_retinanet_R50_R18_labelfree_train.yaml "${S[@]}" "${T[@]}" DATASETS.TRAIN "('$IMAGES',)"
train LF_pool $C/mgd_retinanet_R50_R18_labelfree_pool.yaml "${S[@]}" "${T[@]}" DATASETS.TRAIN "('$POOL',)" MGD.UNLABELED.STATS_PERIOD 50
train LF_pool_uniform $C/mgd_retinanet_R50_R18_labelfree_pool_uniform.yaml "${S[@]}" "${T[@]}" DATASETS.TRAIN "('$POOL',)" MGD.UNLABELED.STATS_PERIOD 50
if [ "${DRYRUN:-0}" != 1 ]; then
  # -v: every test is named as it ends, so a run cut by the time limit still says which failed.
  timeout $(( $(left) - 45 )) $PY -m pytest -v -rfE -n 3 -p no:cacheprovider tests > $R/pytest.log 2>&1; grep -E "FAILED|ERROR" $R/pytest.log > "$OUT/pytest_failures.txt"
fi
while [ $(left) -gt 30 ] && pgrep -f "tools/train_net.py" >/dev/null; do sleep 2; done
pkill -f tools/train_net.py; sleep 2
$PY - <<'PY'
import glob, json, os
runs = {}
for metrics in sorted(glob.glob("/tmp/runs/*/metrics.json")):
    runs[os.path.basename(os.path.dirname(metrics))] = [json.loads(l) for l in open(metrics) if l.strip().startswith("{")]
json.dump(runs, open(os.path.join(os.environ["OUT"], "metrics_all.json"), "w"))
PY
cp $R/DP_learned/distpro_trajectory.json "$OUT/" 2>/dev/null
cp $R/bench/results.md "$OUT/bench_results.md" 2>/dev/null
tar czf "$OUT/logs.tgz" -C $R --exclude='*.pth' --exclude='inference' --exclude='*.json' . 2>/dev/null
tail -3 $R/pytest.log 2>/dev/null; cat "$OUT/sync_counts.json" 2>/dev/null | head -12; grep -h "bbox/AP\"" $R/*/metrics.json | wc -l
