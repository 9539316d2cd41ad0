#!/usr/bin/env bash
# Every GPU figure the README reports, and the GPU tests, in one go:
#
#     bash benchmarks/gpu_suite.sh [LOG_DIR [STEP ...]]
#
# STEP: throughput latency train compile attention tests suite (default: all, in this order: the
# README's figures first, the whole test suite last). Each step's output goes to the terminal and
# to LOG_DIR/STEP.log (default LOG_DIR: outputs/gpu_logs); LOG_DIR/summary.log lists the device,
# the packages that did not load, and each step's exit code and time. A failing step does not
# stop the others; the exit code is the number of steps that failed or did not run. At the end
# each step's closing lines are printed again, for a terminal that keeps only the last of them.
#
# Environment:
#   PYTHON             the interpreter (default python3; one that is not there, such as a
#                      virtual environment that stayed on another machine, falls back to python3)
#   WHEELS             a folder of wheels installed first, offline, into a temporary folder put on
#                      PYTHONPATH: packages the machine lacks (albumentations and its needs)
#   GPU_SUITE_SECONDS  no step starts with less than 20 of this many seconds left, and the one
#                      running is stopped when they run out (default 560, for a 10-minute
#                      session; 0: no limit). Each step also has a limit of its own (limit_of),
#                      so one that hangs cannot take the rest.
set -u
cd "$(dirname "$0")/.."
logs=${1:-outputs/gpu_logs}
shift $(($# > 0 ? 1 : 0))
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(throughput latency train compile attention tests suite)
python=${PYTHON:-python3}
deadline=${GPU_SUITE_SECONDS:-560}
export PYTHONUNBUFFERED=1

command_of() {
    case $1 in
        throughput) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 32 --frames 512" ;;
        latency) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 1 --frames 128" ;;
        train) echo "benchmarks/bench_train.py --device cuda --batch 32 --steps 30 --warmup 5 --workers 8" ;;
        compile) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 32 --frames 512 --compile" ;;
        attention) echo "benchmarks/bench_attention.py --hub-dir tests/fake_dinov2_hub --device cuda --amp bf16 --batch 32" ;;
        tests) echo "-m pytest tests/test_cuda.py -v" ;;
        suite) echo "-m pytest -q --ignore=tests/test_cuda.py" ;; # that file is the tests step
        *) return 1 ;;
    esac
}

# Seconds a step may take (0: no limit of its own), about twice what it should on an H200.
limit_of() {
    case $1 in
        throughput | train | compile) echo 300 ;;
        latency | attention) echo 150 ;;
        tests) echo 360 ;;
        *) echo 0 ;;
    esac
}

# How many of the last lines of a step's log hold its results.
closing_lines() {
    case $1 in
        throughput | latency | compile) echo 20 ;;
        train | tests | suite) echo 14 ;;
        *) echo 8 ;;
    esac
}

for step in "${steps[@]}"; do
    command_of "$step" >/dev/null || { echo "unknown step $step; see the top of $0" >&2; exit 2; }
done
case $deadline in
    '' | *[!0-9]*) echo "GPU_SUITE_SECONDS must be a whole number of seconds" >&2; exit 2 ;;
esac
mkdir -p "$logs"
summary=$logs/summary.log
date -u | tee "$summary"
if ! command -v "$python" >/dev/null; then
    echo "PYTHON=$python is not there (a virtual environment travels as a link only): python3" |
        tee -a "$summary"
    python=python3
fi
if [ -n "${WHEELS:-}" ]; then
    site=$(mktemp -d)
    "$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --target "$site" "$WHEELS"/*.whl 2>&1 | tee -a "$summary"
    echo "wheels from $WHEELS: pip exit ${PIPESTATUS[0]}" | tee -a "$summary"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" - <<'PY'
import importlib.util
import sys

import torch

gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "sees no CUDA GPU"
print(sys.executable, sys.version.split()[0], "torch", torch.__version__, gpu)
needs = {
    "timm": "every step",
    "cv2": "every step",
    "albumentations": "train (data pipeline), tests, suite",
    "pycocotools": "suite",
    "torchao": "suite",
    "onnxruntime": "suite",
    "onnxscript": "suite",
}
for name, what in needs.items():
    try:
        # torchao is slow and noisy to import: found is enough
        load = importlib.util.find_spec if name == "torchao" else importlib.import_module
        found = load(name)
    except Exception as err:  # it fails to load here
        found, what = None, f"{what} ({type(err).__name__}: {err})"
    if found is None:
        print(f"MISSING {name}, needed by {what}")
PY
} 2>&1 | tee -a "$summary"

failed=0
ran=()
for step in "${steps[@]}"; do
    read -ra args <<<"$(command_of "$step")"
    limit=$(limit_of "$step")
    if [ "$deadline" -gt 0 ]; then
        left=$((deadline - SECONDS))
        if [ "$left" -lt 20 ]; then
            echo "$step: not run, $SECONDS of GPU_SUITE_SECONDS=$deadline s used" |
                tee -a "$summary"
            failed=$((failed + 1))
            continue
        fi
        [ "$limit" -gt 0 ] && [ "$limit" -le "$left" ] || limit=$left
    fi
    echo "== $step: $python ${args[*]}"
    start=$SECONDS
    if [ "$limit" -gt 0 ]; then
        # timeout signals the step's whole process group: its spawned processes too
        timeout -k 15 "$limit" "$python" "${args[@]}" 2>&1 | tee "$logs/$step.log"
    else
        "$python" "${args[@]}" 2>&1 | tee "$logs/$step.log"
    fi
    code=${PIPESTATUS[0]}
    ran+=("$step")
    [ "$code" -eq 0 ] || failed=$((failed + 1))
    case $code in 124 | 137) note=", stopped at its limit of $limit s" ;; *) note="" ;; esac
    echo "$step: exit $code, $((SECONDS - start)) s$note" | tee -a "$summary"
done

echo
echo "== the closing lines of each step (whole logs in $logs)"
for step in "${ran[@]}"; do
    echo "-- $step"
    # progress bars are carriage-return updates holding "NN%|"
    tr '\r' '\n' <"$logs/$step.log" | grep -v -E '[0-9]+%\||^[[:space:]]*$' |
        tail -n "$(closing_lines "$step")" | cut -c1-200
done
echo "-- summary"
cat "$summary"
exit "$failed"
