#!/usr/bin/env bash
# One prepared GPU session for issue 17, points 2 and 7 (see the section
# "gpu_session.sh" of benchmarks/README.md for how to prepare and start it).
#
# Run on the device machine from the repository root, with .whl and .official
# carried:
#
#     bash benchmarks/gpu_session.sh
#
# Steps, each under its own `timeout`, all inside SESSION_BUDGET_S (default
# 480 s, so that a 15-minute device lease keeps room for the machine start,
# the transfers and a partial rerun):
#
#   setup      install the carried wheels into /tmp/site, record versions and
#              nvidia-smi                                  -> session.log
#   tests      pytest tests/test_gpu.py (every estimator on CUDA, bf16 auto,
#              channels-last, compile; loss parity)        -> pytest_gpu.{log,xml}
#   suite      the CUDA-relevant test files on CUDA (device="auto" picks it),
#              pytest-xdist when present, -x off           -> pytest_suite.{log,xml}
#   yaware     benchmarks/bench_yaware.py --device cuda against the official
#              views from .official/yaware, GPU utilisation sampled
#                                                  -> bench_yaware.json, gpu_util.csv
#   precision  benchmarks/bench_precision.py --device cuda, DenseNet-121 only
#                                                  -> bench_precision.json
#   official   (not in the default list) benchmarks/bench_yaware_official.py
#              --device cuda: the official yAwareCLModel loop on the GPU
#              against YAwarePretrainer.fit, DenseNet-121, 64³, 8 pairs
#                                                  -> yaware_official.json
#   e2e        y-Aware end to end with the "all" views: the official pipeline
#              (its MRIDataset's NumPy views in 8 DataLoader workers, pinned
#              memory, its loop) against YAwarePretrainer.fit (views on the
#              GPU) in float32 and with precision/memory_format "auto", at
#              121x145x121 and at 64³, 8 pairs; pairs/s, GPU utilisation,
#              CUDA peak memory, model FLOP utilisation
#                                  -> yaware_e2e_full.json, yaware_e2e_64.json
#   mfu        the library's fastest y-Aware step at the paper's setting
#              (121x145x121, 64 pairs, no views, bf16, channels-last): model
#              FLOP utilisation of the GPU's bf16 peak; 32 pairs if 64 do not
#              fit                                 -> yaware_mfu.json
#   drasclr    benchmarks/bench_drasclr.py --device cuda against the official
#              DrasCLR from .official/drasclr      -> drasclr_gpu.json
#   wsp        benchmarks/bench_wsp_memory.py --device cuda against the
#              official WSP from .official/wsp     -> wsp_gpu.json
#   data       benchmarks/bench_data.py on the GPU host's cores: volumes/s
#              from .nii.gz, .npy and the on-disk cache with 0 and 8 workers,
#              at 64³ and 121x145x121, next to the step's demand
#                                                  -> bench_data_gpu_host.json
#
# Eight files at most, all directly under $OUT. Knobs (environment):
#   GPU_SESSION_STEPS   which steps, in order (default: "setup tests e2e
#                       mfu", the first run; the second run is
#                       "setup suite drasclr wsp", the third
#                       "setup data yaware precision official")
#   SESSION_BUDGET_S    seconds for the whole script (default 480)
#   GPU_SESSION_DRY_RUN=1  check the script here without a GPU: device cpu,
#                       tiny sizes, .venv's python under nice, no wheel
#                       install, the suite only collected, every step limit
#                       times GPU_SESSION_CAP_SCALE (default 4 in a dry run:
#                       a loaded 2-core machine); writes to $OUT or to
#                       benchmarks/results/gpu_session_dry
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
DRY=${GPU_SESSION_DRY_RUN:-0}
STEPS=${GPU_SESSION_STEPS:-setup tests e2e mfu}
BUDGET=${SESSION_BUDGET_S:-480}
SCALE=${GPU_SESSION_CAP_SCALE:-1}
START=$(date +%s)

if [ "$DRY" = 1 ]; then
    OUT=${OUT:-$ROOT/benchmarks/results/gpu_session_dry}
    PY=(nice -n 15 env OMP_NUM_THREADS=1 "$ROOT/.venv/bin/python")
    DEVICE=cpu
    SCALE=${GPU_SESSION_CAP_SCALE:-4}
    BUDGET=$((BUDGET * SCALE))
else
    if [ -z "${OUT:-}" ]; then
        echo "OUT is not set (the device machine sets it)" >&2
        exit 2
    fi
    PY=(python3)
    DEVICE=cuda
fi
mkdir -p "$OUT"
LOG=$OUT/session.log
: >"$LOG"

log() { echo "[gpu_session +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# limited CMD...: CMD under `timeout` with the current step's limit (SIGINT
# first, so that pytest still writes its summary and junit file)
LIMIT=60
limited() {
    timeout -s INT -k 20 "$LIMIT" "$@"
    local rc=$?
    if [ $rc = 124 ]; then log "TIMED OUT after ${LIMIT}s: $*"; fi
    return $rc
}

# run_step NAME CAP_S: step_NAME with LIMIT = CAP_S, or what the budget leaves
run_step() {
    local name=$1 cap=$(($2 * SCALE))
    local left=$((BUDGET - ($(date +%s) - START) - 5))
    LIMIT=$((cap < left ? cap : left))
    if [ "$LIMIT" -lt 10 ]; then
        log "step $name: SKIPPED, ${left}s of the budget left"
        return 0
    fi
    log "step $name: start (limit ${LIMIT}s)"
    local t0 rc
    t0=$(date +%s)
    "step_$name"
    rc=$?
    log "step $name: rc=$rc after $(($(date +%s) - t0))s"
}

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

step_setup() {
    if [ "$DRY" != 1 ]; then
        if compgen -G ".whl/*.whl" >/dev/null; then
            python3 -m pip install -q --no-index --no-deps --no-compile \
                --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
                log "WARNING: wheel install failed"
            export PYTHONPATH=/tmp/site:$PYTHONPATH
        else
            log "WARNING: no .whl/*.whl carried: skorch and nibabel may be missing"
        fi
    fi
    {
        echo "== date: $(date -u +%FT%TZ)"
        # written here before the call (README): no .git travels
        echo "== project commit: $(cat .official/project_commit 2>/dev/null || echo unknown)"
        echo "== official y-Aware commit: $(cat .official/yaware_commit 2>/dev/null || echo unknown)"
        echo "== official DrasCLR commit: $(cat .official/drasclr_commit 2>/dev/null || echo unknown)"
        echo "== official WSP commit: $(cat .official/wsp_commit 2>/dev/null || echo unknown)"
        echo "== host: $(uname -a)"
        echo "== cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
        echo "== PYTHONPATH=$PYTHONPATH"
        limited "${PY[@]}" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "numpy", "scipy", "sklearn", "skorch", "nibabel", "pandas",
             "skimage", "pytest", "xdist", "hypothesis", "triton", "sklearn_cl3d"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s} {getattr(mod, '__version__', '?'):16s} {mod.__file__}")
    except Exception as exc:  # report, never stop
        print(f"{name:12s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
          "bf16", torch.cuda.is_bf16_supported())
from sklearn_cl3d.estimators import resolve_precision, resolve_memory_format
dev = "cuda" if torch.cuda.is_available() else "cpu"
print("precision='auto' ->", resolve_precision("auto", dev),
      "| memory_format='auto' ->", resolve_memory_format("auto", dev, 5))
EOF
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi
            nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
        else
            echo "no nvidia-smi"
        fi
    } >>"$LOG" 2>&1
}

step_tests() {
    if [ "$DRY" = 1 ]; then export SKLEARN_CL3D_GPU_TESTS_ON_CPU=1; fi
    limited "${PY[@]}" -m pytest tests/test_gpu.py -v -rA -p no:cacheprovider \
        --durations=15 --junitxml="$OUT/pytest_gpu.xml" >"$OUT/pytest_gpu.log" 2>&1
    local rc=$?
    unset SKLEARN_CL3D_GPU_TESTS_ON_CPU
    tail -n 3 "$OUT/pytest_gpu.log" >>"$LOG"
    return $rc
}

# the test files whose estimators land on CUDA (device="auto"; files that
# pin device="cpu" are left out) and the CUDA-marked augmentation tests
SUITE_FILES=(
    tests/test_estimators.py tests/test_wsp.py tests/test_globallocal.py
    tests/test_checkpoint.py tests/test_persistence.py
    tests/test_estimator_inputs.py tests/test_finetune_parts.py
    tests/test_finetune.py tests/test_common.py
    tests/test_augment.py tests/test_augment_2d.py
)

step_suite() {
    local extra=()
    if [ "$DRY" = 1 ]; then
        extra=(--collect-only -q)  # rules here: never run the suite
    else
        if "${PY[@]}" -c "import xdist" 2>/dev/null; then extra+=(-n 12); fi
        if "${PY[@]}" -c "import pytest_timeout" 2>/dev/null; then
            extra+=(--timeout 60)
        fi
    fi
    limited "${PY[@]}" -m pytest "${SUITE_FILES[@]}" -rfEs -p no:cacheprovider \
        --durations=15 --junitxml="$OUT/pytest_suite.xml" "${extra[@]}" \
        >"$OUT/pytest_suite.log" 2>&1
    local rc=$?
    tail -n 3 "$OUT/pytest_suite.log" >>"$LOG"
    return $rc
}

step_yaware() {
    local official=() monitor=
    if [ -d .official/yaware ]; then
        official=(--official "$ROOT/.official/yaware")
    else
        log "WARNING: no .official/yaware: the official sides are skipped"
    fi
    local size=(--aug-batch 4 --aug-reps 3 --aug-warmup 1 --steps 6 --warmup 2
        --breakdown-reps 3 --repeats 2 --threads 4 --timeout 120)
    if [ "$DRY" = 1 ]; then size=(--quick --repeats 1 --threads 1 --timeout 120); fi
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
            --format=csv -lms 500 >"$OUT/gpu_util.csv" 2>&1 &
        monitor=$!
    fi
    limited "${PY[@]}" benchmarks/bench_yaware.py --device "$DEVICE" "${official[@]}" \
        "${size[@]}" --out "$OUT/bench_yaware.json" >>"$LOG" 2>&1
    local rc=$?
    if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null; fi
    return $rc
}

step_precision() {
    local args=(--backbones densenet121 --quick --threads 4)
    if [ "$DRY" = 1 ]; then args=(--backbones small3d --size 16 --quick --threads 1); fi
    limited "${PY[@]}" benchmarks/bench_precision.py --device "$DEVICE" "${args[@]}" \
        --out "$OUT/bench_precision.json" >>"$LOG" 2>&1
}

step_official() {
    if [ ! -d .official/yaware ]; then
        log "no .official/yaware: step official needs the official checkout"
        return 2
    fi
    local args=(--size 64 --pairs 8 --steps 10 --warmup 3 --repeats 2 --threads 4
        --timeout 150)
    if [ "$DRY" = 1 ]; then
        args=(--size 32 --pairs 2 --steps 1 --warmup 1 --repeats 1 --threads 1
            --timeout 300)
    fi
    limited "${PY[@]}" benchmarks/bench_yaware_official.py --device "$DEVICE" \
        --official "$ROOT/.official/yaware" --sides official library "${args[@]}" \
        --out "$OUT/yaware_official.json" >>"$LOG" 2>&1
}

# y-Aware end to end: the official pipeline with its views in DataLoader
# workers against the library's fit, at full size and at 64³
step_e2e() {
    if [ ! -d .official/yaware ]; then
        log "no .official/yaware: step e2e needs the official checkout"
        return 2
    fi
    local sides=(--sides official_views library_views library_views_fast)
    local common=(--views all --workers 8 --pairs 8 --repeats 1 --threads 4 --flops)
    local full=(--size full --steps 4 --warmup 2 --timeout 100)
    local small=(--size 64 --steps 8 --warmup 3 --timeout 60)
    if [ "$DRY" = 1 ]; then
        common=(--views all --workers 1 --pairs 2 --repeats 1 --threads 1 --flops)
        full=(--size 40x48x40 --steps 1 --warmup 1 --timeout 300)
        small=(--size 32 --steps 1 --warmup 1 --timeout 300)
    fi
    limited "${PY[@]}" benchmarks/bench_yaware_official.py --device "$DEVICE" \
        --official "$ROOT/.official/yaware" "${sides[@]}" "${common[@]}" \
        "${full[@]}" --out "$OUT/yaware_e2e_full.json" >>"$LOG" 2>&1
    local rc=$?
    limited "${PY[@]}" benchmarks/bench_yaware_official.py --device "$DEVICE" \
        --official "$ROOT/.official/yaware" "${sides[@]}" "${common[@]}" \
        "${small[@]}" --out "$OUT/yaware_e2e_64.json" >>"$LOG" 2>&1
    return $((rc | $?))
}

# model FLOP utilisation at the paper's setting (121x145x121, 64 pairs)
step_mfu() {
    local args=(--sides library_fast --size full --steps 2 --warmup 1 --repeats 1
        --threads 4 --flops --timeout 120)
    if [ "$DRY" = 1 ]; then
        args=(--sides library_fast --size 32 --steps 1 --warmup 1 --repeats 1
            --threads 1 --flops --timeout 300)
    fi
    local pairs
    for pairs in 64 32; do
        if [ "$DRY" = 1 ]; then pairs=2; fi
        limited "${PY[@]}" benchmarks/bench_yaware_official.py --device "$DEVICE" \
            "${args[@]}" --pairs "$pairs" --out "$OUT/yaware_mfu.json" >>"$LOG" 2>&1
        if grep -q '"mfu_vs_bf16_peak"\|"achieved_tflops"' "$OUT/yaware_mfu.json" \
            2>/dev/null; then
            return 0
        fi
        log "mfu: no step at $pairs pairs (out of memory?); see yaware_mfu.json"
        if [ "$DRY" = 1 ]; then return 1; fi
    done
    return 1
}

# official_bench CHECKOUT SCRIPT OUTFILE [GPU ARGS...]: a bench_*.py against
# the official checkout .official/CHECKOUT (skipped sides without it)
official_bench() {
    local checkout=$1 script=$2 outfile=$3
    shift 3
    if [ ! -d ".official/$checkout" ]; then
        log "WARNING: no .official/$checkout: the official sides are skipped"
    fi
    local args=(--repeats 2 --threads 4 --timeout 90 "$@")
    if [ "$DRY" = 1 ]; then args=(--quick --repeats 1 --threads 1 --timeout 300); fi
    limited "${PY[@]}" "benchmarks/$script" --device "$DEVICE" \
        --official "$ROOT/.official/$checkout" "${args[@]}" \
        --out "$OUT/$outfile" >>"$LOG" 2>&1
}

# the official per-GPU settings: DrasCLR 32 anchors, 581 landmarks, queues of
# 4096 (the script's defaults); WSP 512² slices, batch 64, TinyNet
step_drasclr() {
    official_bench drasclr bench_drasclr.py drasclr_gpu.json --warmup 3 --steps 12
}

step_wsp() {
    official_bench wsp bench_wsp_memory.py wsp_gpu.json --size 512 --batch 64 \
        --warmup 3 --steps 10 \
        --sides official library library_noaug library_noaug_fast plain
}

step_data() {
    local args=(--workers 0 8 --skip-generation)
    if [ "$DRY" = 1 ]; then args=(--quick --workers 0 1 --skip-generation); fi
    limited "${PY[@]}" benchmarks/bench_data.py "${args[@]}" \
        --out "$OUT/bench_data_gpu_host.json" >>"$LOG" 2>&1
}

# caps per step (seconds); the budget cuts the later ones if earlier ones ran long
declare -A CAP=([setup]=30 [tests]=110 [suite]=90 [yaware]=200 [precision]=50
    [official]=200 [e2e]=220 [mfu]=110 [drasclr]=130 [wsp]=130
    [data]=150)
log "start: steps '$STEPS', budget ${BUDGET}s, device $DEVICE, dry run $DRY"
for step in $STEPS; do
    if [ -z "${CAP[$step]:-}" ]; then
        log "unknown step $step (${!CAP[*]})"
        continue
    fi
    # in this shell (no subshell): setup's PYTHONPATH holds for the others
    run_step "$step" "${CAP[$step]}"
done
log "end; files under $OUT:"
ls -la "$OUT" | tee -a "$LOG"
