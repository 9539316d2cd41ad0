#!/usr/bin/env bash
# Every GPU figure the README reports, and the GPU tests, in one go:
#
#     bash benchmarks/gpu_suite.sh [LOG_DIR [STEP ...]]
#
# STEP: throughput latency train tests attention compile suite (default: all, in this order).
# Each step's output goes to the terminal and to LOG_DIR/STEP.log (default LOG_DIR:
# outputs/gpu_logs); LOG_DIR/summary.log lists the device and each step's exit code and time.
# A failing step does not stop the others; the exit code is the number of failed steps.
set -u
cd "$(dirname "$0")/.."
logs=${1:-outputs/gpu_logs}
shift $(($# > 0 ? 1 : 0))
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(throughput latency train tests attention compile suite)
python=${PYTHON:-python3}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1

command_of() {
    case $1 in
        throughput) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 32 --frames 512" ;;
        latency) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 1 --frames 128" ;;
        train) echo "benchmarks/bench_train.py --device cuda --batch 32 --steps 30 --warmup 5 --workers 8" ;;
        tests) echo "-m pytest tests/test_cuda.py -v" ;;
        attention) echo "benchmarks/bench_attention.py --hub-dir tests/fake_dinov2_hub --device cuda --amp bf16 --batch 32" ;;
        compile) echo "benchmarks/bench_inference.py --device cuda --amp bf16 --batch 32 --frames 512 --compile" ;;
        suite) echo "-m pytest -q" ;;
        *) return 1 ;;
    esac
}

for step in "${steps[@]}"; do
    command_of "$step" >/dev/null || { echo "unknown step $step; see the top of $0" >&2; exit 2; }
done
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available()
        and torch.cuda.get_device_name() or 'sees no CUDA GPU')"
} 2>&1 | tee "$logs/summary.log"

failed=0
for step in "${steps[@]}"; do
    read -ra args <<<"$(command_of "$step")"
    echo "== $step: $python ${args[*]}"
    start=$SECONDS
    "$python" "${args[@]}" 2>&1 | tee "$logs/$step.log"
    code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || failed=$((failed + 1))
    echo "$step: exit $code, $((SECONDS - start)) s" | tee -a "$logs/summary.log"
done
exit "$failed"
