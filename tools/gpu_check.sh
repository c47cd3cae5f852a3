#!/usr/bin/env bash
# The GPU kit (issue 14 item 5): one call of under 8 minutes on one GPU that runs
#   cuda_tests  the test suite's CUDA-marked tests (python -m pytest -q -m cuda)
#   data        the synthetic dataset the trainings read (640 px, generated once)
#   train_*     short trainings through train(cfg): R101-C4 and R50-FPN, AMP in bf16 and in
#               fp16, batch 4 at 640 px; images/s after warm-up steps, peak GPU memory
#   infer_*     inference images/s of ours vs torchvision's twin (float32 and fp16 autocast):
#               R50-FPN at 800 px, R101-C4 at the paper's 600 px
#   torchrun_*  torchrun --nproc_per_node=N of a short R50-FPN training when N > 1 GPUs exist
# Each part runs under its own `timeout` (a slow or failing part cannot sink the rest) and logs
# to OUT_DIR/<part>.log; the Python parts are in detector/benchmarks/gpu.py. At the end
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (a table: part, status, time, key numbers)
# are written and the table printed. Exit status: 0 when every part passed (or was skipped).
#
# Usage: tools/gpu_check.sh [--dry-run] [OUT_DIR]
#   OUT_DIR             default: $OUT if set, else outputs/gpu_check
#   --dry-run           every Python part as a tiny CPU version (torchrun: 2 CPU processes)
# Environment:
#   GPU_CHECK_WORK      datasets, runs, initial weights (default outputs/gpu_check_work; kept
#                       out of OUT_DIR, which stays small)
#   GPU_CHECK_BUDGET    seconds for all parts together (default 450; the summary follows)
#   PYTHON              the interpreter (default python)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=(--dry-run)
  shift
fi
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
WORK_DIR="${GPU_CHECK_WORK:-outputs/gpu_check_work}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
PY="${PYTHON:-python}"
RESERVE=15        # seconds kept for the summary
KILL_AFTER=10     # SIGKILL this long after a part's SIGTERM
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR" "$WORK_DIR" || exit 2
PARTS="$OUT_DIR/parts.tsv"
: > "$PARTS"
START=$(date +%s)
FAILED=0
GPU="$PY -m detector.benchmarks.gpu"

now() { date +%s.%N; }

# run_part NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT_S, time left), log to
# OUT_DIR/NAME.log, record "name rc start end limit note" in parts.tsv
run_part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START) - RESERVE - KILL_AFTER))
  if ((left < 20)); then
    printf '%s\t-\t-\t-\t%s\t%s\n' "$name" "$limit" "skipped: the ${BUDGET} s budget is spent" >>"$PARTS"
    echo "== $name: skipped (budget spent)"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit} s): $*"
  local t0 rc
  t0=$(now)
  timeout --kill-after="$KILL_AFTER" "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$t0" "$(now)" "$limit" >>"$PARTS"
  if ((rc != 0)); then
    FAILED=1
    echo "   $name: exit status $rc; last lines of $OUT_DIR/$name.log:"
    tail -n 5 "$OUT_DIR/$name.log" | tr '\r' '\n' | tail -n 5 | sed 's/^/   | /'
  else
    tail -n 1 "$OUT_DIR/$name.log" | sed 's/^/   /'
  fi
}

skip_part() {  # skip_part NAME NOTE
  printf '%s\t-\t-\t-\t-\t%s\n' "$1" "$2" >>"$PARTS"
  echo "== $1: $2"
}

command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT_DIR/nvidia-smi.log" 2>&1

# the machine (OUT_DIR/env.json); the last line of its log is the number of GPUs
run_part env 60 $GPU env --out "$OUT_DIR"
NGPU=$(tail -n 1 "$OUT_DIR/env.log" 2>/dev/null | grep -E '^[0-9]+$' || echo 0)

run_part cuda_tests 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider

run_part data 45 $GPU data --size 640 --num-train 64 --work "$WORK_DIR" "${DRY[@]}"

TRAIN=(--size 640 --num-train 64 --batch 4 --warmup 10 --workers 8 --work "$WORK_DIR"
  --out "$OUT_DIR")
for dtype in bf16 fp16; do
  run_part "train_r101_c4_$dtype" 70 $GPU train --model r101_c4 --dtype "$dtype" --iters 40 \
    "${TRAIN[@]}" "${DRY[@]}"
done
for dtype in bf16 fp16; do
  run_part "train_r50_fpn_$dtype" 60 $GPU train --model r50_fpn --dtype "$dtype" --iters 50 \
    "${TRAIN[@]}" "${DRY[@]}"
done

run_part infer_r50_fpn 60 $GPU infer --model r50_fpn --size 800 --batch 4 --warmup 3 \
  --repeats 20 --out "$OUT_DIR" "${DRY[@]}"
run_part infer_r101_c4 60 $GPU infer --model r101_c4 --size 600 --batch 4 --warmup 3 \
  --repeats 20 --out "$OUT_DIR" "${DRY[@]}"

NPROC=$NGPU
((${#DRY[@]})) && NPROC=2
if ((NPROC > 1)); then
  name="torchrun_r50_fpn_bf16_x$NPROC"
  run_part "$name" 75 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m detector.benchmarks.gpu train --model r50_fpn --dtype bf16 --iters 40 --name "$name" \
    --size 640 --num-train 64 --batch 4 --warmup 10 --workers $((12 / NPROC + 1)) \
    --work "$WORK_DIR" --out "$OUT_DIR" "${DRY[@]}"
else
  skip_part torchrun "skipped: $NGPU GPU(s) visible; torchrun needs more than 1"
fi

timeout 60 $GPU summary "$OUT_DIR" 2>"$OUT_DIR/summary.log" || FAILED=1
echo "results: $OUT_DIR/gpu_check.md, $OUT_DIR/gpu_check.json ($(($(date +%s) - START)) s)"
exit "$FAILED"
