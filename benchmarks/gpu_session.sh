#!/usr/bin/env bash
# One GPU session's measurements (docs/BENCHMARKS.md): run from the repository root on a
# machine with CUDA and no network, with the wheelhouse of scripts/wheelhouse.sh in .whl/.
#   OUT=/some/folder bash benchmarks/gpu_session.sh [SECONDS]
# Background: the teacher recipe runs (R50 at two LRs and R101 teachers, R18 baseline; up to
# 3,000 iterations, evaluated every 750). Foreground: synchronisations per step, AMP vs float32 MGD training,
# the overlapped vs synchronous update cost, the test suite on a CUDA machine. Everything
# stops after SECONDS (default 540); metrics and logs are copied to $OUT.
set -u
BUDGET="${1:-540}"
START=$(date +%s)
OUT="${OUT:?set OUT}"
export PYTHONUNBUFFERED=1 MGD_DATASETS=/tmp/mgd_data PYTHONPATH="/tmp/site:$PWD"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v detectron2) \
  && python3 -m zipfile -e .whl/sal_detectron2-*.whl /tmp/site || { echo "install failed"; exit 1; }
# OR-Tools needs a protobuf the machine may not have: without it the solver falls back to scipy.
python3 -c "from ortools.graph.python import min_cost_flow" 2>/dev/null || rm -rf /tmp/site/ortools*
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt" 2>&1
python3 - <<'PY' || exit 1
import torch, mgd_det.data as d
from detectron2.modeling import build_model
from mgd_det.config import setup_cfg
for name in ("mini_digits_train", "mini_digits_val"):
    d.ensure_generated(name)
torch.manual_seed(0)
cfg = setup_cfg("configs/mini_digits/retinanet_R50_FPN.yaml", ["MODEL.DEVICE", "cpu"])
torch.save({"model": build_model(cfg).state_dict()}, "/tmp/teacher_random_R50.pth")
PY
R=/tmp/runs; mkdir -p $R
recipe() {  # name config opts...
  local name=$1 cfg=$2; shift 2
  setsid nohup python3 tools/train_net.py --config-file "$cfg" OUTPUT_DIR $R/$name SOLVER.MAX_ITER 3000 \
    SOLVER.STEPS "(2000,2600)" TEST.EVAL_PERIOD 750 DATALOADER.NUM_WORKERS 2 SOLVER.CHECKPOINT_PERIOD 100000 "$@" \
    > $R/$name.log 2>&1 &
}
recipe teacher_R50_lr0.02 configs/mini_digits/retinanet_R50_FPN.yaml SOLVER.BASE_LR 0.02
recipe teacher_R50_lr0.04 configs/mini_digits/retinanet_R50_FPN.yaml SOLVER.BASE_LR 0.04
recipe teacher_R101_lr0.02 configs/mini_digits/retinanet_R101_FPN.yaml SOLVER.BASE_LR 0.02
recipe student_R18_lr0.02 configs/mini_digits/retinanet_R18_FPN.yaml SOLVER.BASE_LR 0.02
python3 -m benchmarks.sync_count --out "$OUT/sync_counts.json" > $R/sync.log 2>&1
for amp in False True; do
  timeout $(( $(left) / 4 )) python3 tools/train_net.py --config-file configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml \
    OUTPUT_DIR $R/amp_$amp SOLVER.AMP.ENABLED $amp SOLVER.MAX_ITER 300 MGD.TEACHER.WEIGHTS /tmp/teacher_random_R50.pth \
    DATASETS.TEST "()" DATALOADER.NUM_WORKERS 3 SOLVER.CHECKPOINT_PERIOD 100000 > $R/amp_$amp.log 2>&1
done
timeout $(( $(left) / 3 )) python3 tools/benchmark.py --out-dir $R/bench --only update,step --update-batches 20x16x128 \
  --settings 16x128 --reps 5 --warmup 1 > $R/bench.log 2>&1
timeout $(( $(left) - 40 )) python3 -m pytest -q -n 8 -p no:cacheprovider tests > $R/pytest.log 2>&1
sleep $(( $(left) > 25 ? $(left) - 25 : 0 ))
pkill -f tools/train_net.py; sleep 3
python3 - <<'PY'
import glob, json, os
runs = {}
for metrics in glob.glob("/tmp/runs/*/metrics.json"):
    rows = [json.loads(l) for l in open(metrics) if l.strip().startswith("{")]
    runs[os.path.basename(os.path.dirname(metrics))] = rows
json.dump(runs, open(os.path.join(os.environ["OUT"], "metrics_all.json"), "w"))
PY
tar czf "$OUT/logs.tgz" -C /tmp/runs --exclude='*.pth' --exclude='inference' . 2>/dev/null
cp $R/bench/results.md "$OUT/bench_results.md" 2>/dev/null; cp $R/bench/results.json "$OUT/bench_results.json" 2>/dev/null
tail -5 $R/pytest.log; cat $OUT/sync_counts.json | head -20
