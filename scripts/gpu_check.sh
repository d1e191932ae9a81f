#!/usr/bin/env bash
# The one command that verifies the GPU path on a GPU machine and times it:
#   1. environment report (GPU, driver, nvcc, torch)            5. kernel timings vs the torch reference on the GPU
#   2. build the CUDA extension (and the CPU one, in parallel)   6. a short phantom reconstruction, torch vs CUDA
#   3. test/test_cuda.py (GPU parity tests + CPU emulation)      7. test/test_torch_sart.py (the torch initial solve
#   4. compute-sanitizer memcheck + racecheck (smoke)               on the GPU against the CPU)
#   8. `ixgs reconstruct --device cuda` of the carried full-body scan (gpu_data/scan, made here by
#      scripts/prepare_gpu_data.sh) at the default schedule and at GPU_CHECK_LONG_ITERATIONS (default 10000) with
#      positions, scales and densification on (config/long_schedule.yaml): recon_short.json, recon_long.json
# and prints a summary table. Steps run under one time budget (GPU_CHECK_BUDGET seconds, default 560, so that the
# whole run fits one 10-minute device command); a step that no longer fits is skipped and says so.
#
#   bash scripts/gpu_check.sh                 # from the repository root of a GPU machine
#   GPU_CHECK_BUDGET=1200 GPU_CHECK_ITERATIONS=1000 bash scripts/gpu_check.sh
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh   # here, on the CPU: steps 7-8 with .venv's python, the
#                                                   # C++ kernels and tiny schedules, to check the script itself
#
# Python: $IXGS_PYTHON if set, else the first of .venv/bin/python and python3 whose torch sees a CUDA device.
# The project's device machines ship such a python3 (torch 2.11+cu130 with numpy, pytest, pytest-timeout,
# ninja, nvidia-ml-py), so nothing needs to be carried for this script. A CUDA torch wheel cannot be carried
# (about 1 GB; a device call carries at most 64 MiB). Should a later test need a pure-Python package the image
# lacks, put its wheels in .whl/ (see the device notes; name .whl in the call's carry): they are installed with
# pip --no-index --no-deps into /tmp/ixgs_site first.
#
# Logs and results go to $OUT (set by the device tool) or ${TMPDIR:-/tmp}/ixgs_gpu_check: gpu_check.log (everything),
# build.log, test.log, sanitizer.log, bench.json, recon.json, summary.txt. Exit status: 0 when the build and the
# tests passed, 1 otherwise (timings and sanitizer findings are reported, not judged).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${OUT:-${TMPDIR:-/tmp}/ixgs_gpu_check}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
: >"$LOG"
BUDGET=${GPU_CHECK_BUDGET:-560}
ITERATIONS=${GPU_CHECK_ITERATIONS:-300}
LONG_ITERATIONS=${GPU_CHECK_LONG_ITERATIONS:-10000}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
SCAN=${GPU_CHECK_SCAN:-$ROOT/gpu_data/scan}
START=$(date +%s)
declare -a SUMMARY=()
STATUS=0

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME MIN_SECONDS MAX_SECONDS LOGFILE CMD...: runs CMD under `timeout` (at most MAX_SECONDS and what is left
# of the budget), skips it when less than MIN_SECONDS are left; records the outcome for the summary.
step() {
  local name=$1 min=$2 max=$3 file=$4
  shift 4
  local left
  left=$(remaining)
  if ((left < min)); then
    SUMMARY+=("$(printf '%-36s %-8s %6s  %s' "$name" SKIPPED - "only ${left}s of the budget left")")
    log "skip $name (${left}s left, needs ${min}s)"
    return 2
  fi
  local limit=$((left < max ? left : max))
  log "start $name (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$file" >>"$LOG"
  rc=${PIPESTATUS[0]}
  local dt=$(($(date +%s) - t0)) what=ok
  ((rc == 124 || rc == 137)) && what=TIMEOUT
  ((rc != 0 && rc != 124 && rc != 137)) && what=FAILED
  SUMMARY+=("$(printf '%-36s %-8s %5ss  rc=%s, log %s' "$name" "$what" "$dt" "$rc" "$(basename "$file")")")
  log "end $name: $what (rc=$rc, ${dt}s)"
  return "$rc"
}

# ---------------------------------------------------------------------------------------------- python
PY=${IXGS_PYTHON:-}
if ((DRY_RUN)) && [[ -z "$PY" ]]; then
  PY=$ROOT/.venv/bin/python
fi
if [[ -z "$PY" ]]; then
  for cand in "$ROOT/.venv/bin/python" python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
      PY=$cand
      break
    fi
  done
fi
if [[ -d "$ROOT/.whl" ]] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  log "installing carried wheels from .whl/ into /tmp/ixgs_site"
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ixgs_site "$ROOT"/.whl/*.whl >>"$LOG" 2>&1 || log "wheel install failed (see log)"
  export PYTHONPATH=/tmp/ixgs_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 IXGS_NATIVE_VERBOSE=1

{
  echo "== environment"
  date -u
  uname -a
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true
  (command -v nvcc && nvcc --version | tail -2) 2>&1 || echo "nvcc not on PATH"
  echo "python: ${PY:-none}"
  [[ -n "$PY" ]] && "$PY" - <<'EOF'
import sys, torch
from torch.utils import cpp_extension
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "CUDA_HOME", cpp_extension.CUDA_HOME)
p = torch.cuda.get_device_properties(0)
print("device", p.name, f"cc {p.major}.{p.minor}", p.multi_processor_count, "SMs",
      round(p.total_memory / 2**30, 1), "GiB")
EOF
} 2>&1 | tee -a "$LOG"

if [[ -z "$PY" ]]; then
  log "no python with a CUDA-enabled torch found (set IXGS_PYTHON); nothing to check"
  printf '%s\n' "gpu_check: BLOCKED - no python whose torch sees a CUDA device" | tee "$OUT_DIR/summary.txt"
  exit 1
fi

# recon_args NAME ITERATIONS [CONFIG]: the arguments of an ixgs reconstruct of the carried scan on the GPU (on the
# CPU in a dry run) into $OUT_DIR/NAME; its report.json is then copied to $OUT_DIR/NAME.json
recon_args() {
  local name=$1 its=$2 cfg=${3:-}
  local dev=cuda backend=cuda
  if ((DRY_RUN)); then dev=cpu backend=cpp; fi
  RECON_ARGS=("$PY" -m ixgs_ros.cli reconstruct "$SCAN" --out "$OUT_DIR/$name" --device "$dev" --backend "$backend"
    --iterations "$its" --holdout 3 --quiet --no-navigation)
  if [[ -n "$cfg" ]]; then RECON_ARGS+=(--config "$cfg"); fi
  return 0
}

if ((DRY_RUN == 0)); then
# ---------------------------------------------------------------------------------------------- build
# the CPU extension (the tests compare against it) builds in the background meanwhile
("$PY" -m ixgs_ros.engine.kernels --build >"$OUT_DIR/build_cpu.tmp" 2>&1; echo "rc=$?" >>"$OUT_DIR/build_cpu.tmp") &
CPU_BUILD=$!
BUILD_OK=1
step "build CUDA extension" 60 360 "$OUT_DIR/build.log" "$PY" -m ixgs_ros.engine.kernels --build --kind cuda --verbose ||
  BUILD_OK=0
wait "$CPU_BUILD"
{
  echo "== CPU extension build"
  cat "$OUT_DIR/build_cpu.tmp"
} >>"$OUT_DIR/build.log"
rm -f "$OUT_DIR/build_cpu.tmp"
if ((BUILD_OK == 0)); then
  STATUS=1
  log "the CUDA extension did not build; see build.log"
fi

# ---------------------------------------------------------------------------------------------- tests
if ((BUILD_OK)); then
  step "pytest test/test_cuda.py" 60 240 "$OUT_DIR/test.log" \
    "$PY" -m pytest test/test_cuda.py -q -rs -p no:cacheprovider || STATUS=1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT_DIR/test.log" | tail -15 | tee -a "$LOG"

  # ------------------------------------------------------------------------------------------ sanitizers
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
      step "compute-sanitizer $tool (smoke)" 40 120 "$OUT_DIR/sanitizer.log" \
        compute-sanitizer --tool "$tool" --kernel-name kns=ixgs --error-exitcode 3 \
        "$PY" benchmarks/bench_cuda.py --smoke
    done
  else
    SUMMARY+=("$(printf '%-36s %-8s %6s  %s' "compute-sanitizer" SKIPPED - "not on PATH")")
  fi

  # ------------------------------------------------------------------------------------------ timings
  step "bench: kernels vs torch (GPU)" 60 200 "$OUT_DIR/bench.log" \
    "$PY" benchmarks/bench_cuda.py --sections render,voxelize --json "$OUT_DIR/bench.json"
  step "bench: reconstruction torch vs cuda" 90 400 "$OUT_DIR/bench.log" \
    "$PY" benchmarks/bench_cuda.py --sections recon --iterations "$ITERATIONS" --json "$OUT_DIR/recon.json"
fi
fi

# ---------------------------------------------------------------------------------------------- torch init, full runs
step "pytest test/test_torch_sart.py" 30 120 "$OUT_DIR/test_torch_sart.log" \
  "$PY" -m pytest test/test_torch_sart.py -q -rs -p no:cacheprovider || STATUS=1
if [[ -f "$SCAN/scan.json" ]]; then
  if ((DRY_RUN)); then SHORT=3 LONG=6; else SHORT=100 LONG=$LONG_ITERATIONS; fi
  export IXGS_CUDA_AUTO=1
  recon_args recon_short "$SHORT"
  step "ixgs reconstruct, default schedule" 60 200 "$OUT_DIR/recon.log" "${RECON_ARGS[@]}" || STATUS=1
  recon_args recon_long "$LONG" "$ROOT/config/long_schedule.yaml"
  step "ixgs reconstruct, $LONG it, long schedule" 90 600 "$OUT_DIR/recon.log" "${RECON_ARGS[@]}" || STATUS=1
  for name in recon_short recon_long; do
    [[ -f "$OUT_DIR/$name/report.json" ]] && cp "$OUT_DIR/$name/report.json" "$OUT_DIR/$name.json"
  done
  "$PY" scripts/gpu_summary.py "$OUT_DIR" | tee -a "$LOG" || true
else
  SUMMARY+=("$(printf '%-36s %-8s %6s  %s' "ixgs reconstruct (full-body scan)" SKIPPED - \
    "no $SCAN: run scripts/prepare_gpu_data.sh here and carry gpu_data")")
fi

# ---------------------------------------------------------------------------------------------- summary
{
  echo
  echo "================================ gpu_check summary ($(($(date +%s) - START)) s)"
  printf '%-36s %-8s %6s  %s\n' step outcome time detail
  printf '%s\n' "${SUMMARY[@]}"
  echo
  if [[ -f "$OUT_DIR/bench.log" ]]; then
    echo "---- timings (bench_cuda.py tables)"
    grep -E "^(case|render|rasterize|voxelize|reconstruction|NVIDIA|[A-Z].*SMs)" "$OUT_DIR/bench.log" || true
  fi
  echo
  if ((STATUS == 0)); then
    if ((DRY_RUN)); then
      echo "RESULT: dry run on the CPU passed (the script's steps 7-8 work; nothing was checked on a GPU)"
    else
      echo "RESULT: build and tests passed on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    fi
  else
    echo "RESULT: FAILED (see the logs in $OUT_DIR)"
  fi
} | tee "$OUT_DIR/summary.txt" | tee -a "$LOG"
exit "$STATUS"
