#!/usr/bin/env bash
# One GPU session of the accuracy study (issue 21; docs/BENCHMARKS.md "The study ledger"), from
# the repository root on a machine with CUDA and no network, with the wheelhouse of
# scripts/wheelhouse.sh in .whl/:
#   MGD_GIT_COMMIT=<sha of the checkout> OUT=/some/folder bash benchmarks/gpu_session.sh [SECONDS]
# SECONDS (default 560) is the wall time the whole script may take (one device command runs at
# most 600 s). After installing and generating the data, it runs the budgeted study
#   tools/distill_mini_digits.py --mode $MODE --budget-min <what is left, minus a margin>
# against a copy of the committed ledger (docs/results/study/*.json) in $OUT/study: runs already
# there are skipped, the teacher is retrained from the same seed (its weights are not on a fresh
# machine), and only the runs that fit are started. Each finished run adds a JSON entry to
# $OUT/study; the lead copies the new ones back and commits them:
#   cp -n <files_at>/study/*.json docs/results/study/
#   python -m study.report --ledger docs/results/study --readme --plot docs/img/study.png
# Also in $OUT: study.log (the plan: what ran, what was skipped, what remains), device.txt,
# sync_counts.json (SYNC=0 skips it), logs.tgz; pytest_failures.txt with TESTS=1.
# MODE (gpu), STUDENTS (baseline,AMP), SEEDS (0,1,2), PARALLEL (4), FINETUNE=1 choose the study;
# S_PER_IT: seconds per iteration to plan with while the ledger has no run from this GPU.
# DRYRUN=1 runs the same plan on the CPU with the tiny data sets and a few iterations (mode smoke).
# RUNS (default /tmp/runs): the runs' folders (a finished teacher there is reused, not retrained).
set -u
BUDGET="${1:-560}"
START=$(date +%s)
OUT="${OUT:?set OUT}"
export PYTHONUNBUFFERED=1 MGD_DATASETS="${MGD_DATASETS:-/tmp/mgd_data}" PYTHONPATH="/tmp/site:$PWD"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
R="${RUNS:-/tmp/runs}"; mkdir -p "$R" "$OUT/study"
MODE="${MODE:-gpu}"; STUDENTS="${STUDENTS:-baseline,AMP}"; SEEDS="${SEEDS:-0,1,2}"; PARALLEL="${PARALLEL:-4}"
DATA=(mini_digits_train mini_digits_val); POOL=mini_digits_pool; DEV=(); PY=python3; MARGIN=40
if [ "${DRYRUN:-0}" = 1 ]; then
  MODE=smoke; DATA=(mini_digits_tiny_train mini_digits_tiny_val); POOL=mini_digits_pool_tiny
  PY="${PYTHON:-python3}"; DEV=(MODEL.DEVICE cpu); PARALLEL="${PARALLEL_DRYRUN:-1}"; MARGIN=10
else
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v detectron2) \
    && $PY -m zipfile -e .whl/sal_detectron2-*.whl /tmp/site || { echo "install failed"; exit 1; }
  # OR-Tools needs a protobuf the machine may not have: without it the solver falls back to scipy.
  $PY -c "from ortools.graph.python import min_cost_flow" 2>/dev/null || rm -rf /tmp/site/ortools*
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt" 2>&1
fi
cp docs/results/study/*.json "$OUT/study/" 2>/dev/null
# The data sets, generated once here so that no run's clock pays for them.
$PY - "$POOL" "${DATA[@]}" <<'PY' || exit 1
import sys, mgd_det.data as d
from mgd_det.data.pool import ensure_pool
for name in sys.argv[2:]:
    d.ensure_generated(name)
ensure_pool(sys.argv[1])
PY
if [ "${SYNC:-1}" = 1 ]; then
  timeout 120 $PY -m benchmarks.sync_count --out "$OUT/sync_counts.json" "${DEV[@]}" > $R/sync.log 2>&1
fi
if [ "${TESTS:-0}" = 1 ] && [ "${DRYRUN:-0}" != 1 ]; then
  # The CUDA test suite beside the study (-v: a run cut by the time limit still names what failed).
  (timeout $(( $(left) - MARGIN )) $PY -m pytest -v -rfE -n 3 -p no:cacheprovider tests > $R/pytest.log 2>&1
   grep -E "FAILED|ERROR" $R/pytest.log > "$OUT/pytest_failures.txt") &
fi
FT=(); [ "${FINETUNE:-0}" = 1 ] && FT=(--finetune)
[ -n "${S_PER_IT:-}" ] && FT+=(--s-per-it "$S_PER_IT")
STUDY_S=$(( $(left) - MARGIN ))
echo "study budget: $STUDY_S s (mode $MODE, students $STUDENTS, seeds $SEEDS, parallel $PARALLEL)"
# The study stops starting runs past its budget; the timeout is the backstop for an estimate
# that was too low (a run cut by it leaves no ledger entry).
timeout $(( STUDY_S + MARGIN / 2 )) $PY tools/distill_mini_digits.py --mode "$MODE" --students "$STUDENTS" \
  --seeds "$SEEDS" --parallel "$PARALLEL" "${FT[@]}" --budget-min "$(echo "$STUDY_S" | awk '{print $1 / 60}')" \
  --ledger "$OUT/study" --out-dir $R/study "${DEV[@]}" > $R/study_stdout.log 2>&1
echo "study exit code: $?"
cp $R/study/study.log "$OUT/study.log" 2>/dev/null
wait
tar czf "$OUT/logs.tgz" -C $R --exclude='*.pth' --exclude='inference' . 2>/dev/null
grep -A40 "Study session:" "$OUT/study.log" | grep -E "Study session|recorded|remains|FAILED"
ls "$OUT/study" | wc -l
