#!/usr/bin/env bash
# One-shot GPU check in one call of at most 9 minutes: build the CUDA extension for this
# card's arch only, run the GPU tests (pytest -m gpu), time
# the core rows of bench/bench_gpu.py, and one training step on CUDA (bench_train.py).
#
#   bash bench/gpu_check.sh                 # from the repository root
#
# Everything goes to a work folder: env.json, nvidia-smi.txt, <step>.log,
# steps.tsv, tests.xml, bench_gpu.json, bench_train.json and report.md (rewritten after
# every step, so an interrupted run still leaves a report). When $OUT is set (a folder
# whose files are collected, possibly only a few of them), the work folder is
# build/gpu_check/ and after every step $OUT receives just report.md, bench_gpu.json,
# bench_train.json, tests.xml and logs.tar.gz (all the rest); without $OUT the work
# folder is bench/results/gpu-<date>/. A failing step is recorded and the script goes on.
# Needs torch (with CUDA) and triton installed; uses no network.
#
# Time limits (seconds; together 530 s, under 9 minutes with the start-up):
#   env 30, build 200 (one arch: TORCH_CUDA_ARCH_LIST from the device's capability),
#   tests 120, bench 120 (the core rows: ugr backends vs a device copy at the default
#   grid, UGR_BENCH_ROUNDS=5), train 60.
#
# Knobs (environment):
#   UGR_GPU_STEPS   steps to run, default "env build tests bench train"
#   UGR_T_BUILD, UGR_T_TESTS, UGR_T_BENCH, UGR_T_TRAIN   the limits above
#   UGR_BENCH_FULL=1  benchmark the slow rows on the full grid too (not in 9 minutes)
#   UGR_BENCH_ROUNDS  timed rounds per benchmark (default 5 here)
#   MAX_JOBS, TORCH_CUDA_ARCH_LIST   passed to the extension build (defaults: nproc,
#                                    the compute capability of GPU 0)
#   UGR_GPU_WORK    the work folder when $OUT is set (default build/gpu_check, wiped)
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    if [ -n "${UGR_GPU_WORK:-}" ]; then
        WORK=$UGR_GPU_WORK
    else
        WORK=$ROOT/build/gpu_check
        rm -rf "$WORK"                      # ours: start clean
    fi
else
    WORK=$ROOT/bench/results/gpu-$(date +%Y%m%d-%H%M%S)
    OUT=$WORK
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
STEPS=${UGR_GPU_STEPS:-"env build tests bench train"}
export UGR_BENCH_ROUNDS=${UGR_BENCH_ROUNDS:-5}
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1

report() {
    "$PY" "$ROOT/bench/gpu_report.py" --out "$WORK" >/dev/null 2>&1 \
        || echo "(gpu_report.py failed)" >&2
    if [ "$WORK" != "$OUT" ]; then
        local f
        for f in report.md bench_gpu.json bench_train.json tests.xml; do
            [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
        done
        tar czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null || true
    fi
}

# run_step NAME LIMIT CMD...: run CMD under a time limit, log to $WORK/NAME.log.
run_step() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >>"$WORK/steps.tsv"
    echo "   exit $rc after $(( $(date +%s) - start ))s; tail of $name.log:"
    tail -n 5 "$WORK/$name.log" | sed 's/^/   | /'
    report
    return $rc
}

want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step_env() {
    nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" >"$WORK/nvidia-smi.txt"
    "$PY" - <<'EOF'
import importlib, json, os, platform, subprocess
env = {"python": platform.python_version()}
try:
    import torch
    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        env["device"] = "no CUDA device visible to torch"
except Exception as exc:
    env["torch"] = f"import failed: {exc}"
for name in ("triton", "torchmetrics", "fast_bss_eval", "asteroid", "pytest_benchmark"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "installed")
    except Exception:
        env[name] = "not installed"
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                    "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=20).stdout.strip()
except Exception:
    pass
try:
    env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True,
                                 timeout=20).stdout.strip().splitlines()[-1]
except Exception:
    env["nvcc"] = "not found"
with open(os.path.join(os.environ["WORK"], "env.json"), "w") as fh:
    json.dump(env, fh, indent=1)
print(json.dumps(env, indent=1))
EOF
}

step_build() {
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
        local cap
        cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null)
        [ -n "$cap" ] && export TORCH_CUDA_ARCH_LIST="$cap"
    fi
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS"
    if ! "$PY" -m pip install --no-build-isolation --no-deps -e . ; then
        echo "pip editable install failed; trying setup.py build_ext --inplace"
        "$PY" setup.py build_ext --inplace || return 1
    fi
    "$PY" - <<'EOF'
import ugr_kernels as uk
from ugr_kernels import backends
c = getattr(uk, "_C", None)
print("_C:", c)
print("_C.has_cuda():", getattr(c, "has_cuda", lambda: None)() if c is not None else None)
for name in backends.BACKENDS:
    print(f"backend {name}: cuda={backends.is_available(name, 'cuda')} cpu={backends.is_available(name, 'cpu')}")
ok = c is not None and getattr(c, "has_cuda", lambda: False)()
raise SystemExit(0 if ok else 3)
EOF
}

step_tests() {
    # Every GPU test (marker gpu: tests/test_gpu.py, tests/test_train_gpu.py, ...).
    "$PY" -m pytest -m gpu tests -q -rs \
        -p no:cacheprovider --junitxml="$WORK/tests.xml"
}

step_bench() {
    # The core rows: the ugr backends and the device copy (the bandwidth reference).
    local sel="test_ugr_backend or test_copy_bandwidth"
    if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
        "$PY" -m pytest bench/bench_gpu.py -q -p no:cacheprovider --benchmark-only -k "$sel" \
            --benchmark-json="$WORK/bench_gpu.json" --benchmark-columns=mean,stddev,rounds
    else
        echo "pytest-benchmark is not installed: using the stand-in fixture"
        UGR_BENCH_JSON="$WORK/bench_gpu.json" "$PY" -m pytest bench/bench_gpu.py -q \
            -p no:cacheprovider -k "$sel"
    fi
}

step_train() {
    # One SuDoRM-RF step on CUDA (bf16 autocast), eager only, the smallest model.
    if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
        "$PY" -m pytest bench/bench_train.py -q -p no:cacheprovider --benchmark-only \
            -k "tiny and eager" --benchmark-json="$WORK/bench_train.json"
    else
        "$PY" -m pytest bench/bench_train.py -q -p no:cacheprovider -k "tiny and eager"
    fi
}

echo "ugr GPU check -> $OUT (work folder $WORK; steps: $STEPS)"
: >"$WORK/steps.tsv"
export PY OUT WORK
export -f step_env step_build step_tests step_bench step_train
overall=0
if want env; then run_step env 30 bash -c step_env || overall=1; fi
if want build; then run_step build "${UGR_T_BUILD:-200}" bash -c step_build || overall=1; fi
if want tests; then run_step tests "${UGR_T_TESTS:-120}" bash -c step_tests || overall=1; fi
if want bench; then run_step bench "${UGR_T_BENCH:-120}" bash -c step_bench || overall=1; fi
if want train; then run_step train "${UGR_T_TRAIN:-60}" bash -c step_train || overall=1; fi
report
echo "report: $OUT/report.md"
exit $overall
