#!/usr/bin/env bash
# The GPU protocol of benchmarks/README.md ("GPU figures") as one script, for a host with an NVIDIA GPU where
# this package is installed with ONNX Runtime CUDA (and TensorRT, where there is one):
#
#   benchmarks/gpu_run.sh prepare CACHE         the random-weight s-full-v2 checkpoint and its fp32 and fp16
#                                               exports, into the bench's cache (CPU work: run it first, or
#                                               beside something else)
#   benchmarks/gpu_run.sh run CACHE OUTPUT      the machine, tests/gpu, then `audioldm-trt bench` at batch 1
#                                               and 4: ONNX Runtime CUDA fp16 and fp32 (and TensorRT where it
#                                               is installed) against diffusers fp16; every log and report
#                                               goes to OUTPUT
#
# Run from the repository root. Each step writes its own log; a failing step does not stop the next ones, and
# the script's status is the number of steps that failed.
set -uo pipefail

stage=${1:?usage: gpu_run.sh prepare CACHE | run CACHE OUTPUT}
cache=${2:?usage: gpu_run.sh prepare CACHE | run CACHE OUTPUT}
failed=0

step() {  # step NAME COMMAND...: run, log to $output/NAME.log, count a failure
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    if "$@" >"$output/$name.log" 2>&1; then
        echo "== $name: ok ($((SECONDS - started)) s)"
    else
        echo "== $name: FAILED with status $? ($((SECONDS - started)) s); the end of its log:"
        tail -n 25 "$output/$name.log"
        failed=$((failed + 1))
    fi
}

case $stage in
prepare)
    output=$cache/logs
    mkdir -p "$output"
    step prepare python -c "
from pathlib import Path
from audioldm_trt.benchmarks.bench import Settings, prepare_models
print(prepare_models(Settings(cache=Path('$cache')), ['fp32', 'fp16']))
"
    ;;
run)
    output=${3:?usage: gpu_run.sh run CACHE OUTPUT}
    mkdir -p "$output"
    step machine bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv;
        lscpu | grep -E "Model name|^CPU\(s\)"; python -c "
import onnxruntime, torch, diffusers, transformers
print(\"onnxruntime\", onnxruntime.__version__, onnxruntime.get_available_providers())
print(\"torch\", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
print(\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)"'
    step gpu-tests python -m pytest -m gpu tests/gpu -rs -p no:cacheprovider
    for batch in 1 4; do
        step "bench-batch$batch" audioldm-trt bench --preset s-full-v2 --cache "$cache" --duration 5 --steps 10 \
            --guidance 2.5 --batch "$batch" --runs 5 --warmup 2 \
            --backends onnxruntime-cuda onnxruntime-cuda-fp32 tensorrt --output "$output/bench-batch$batch"
        cat "$output/bench-batch$batch/bench.md" 2>/dev/null
    done
    ;;
*)
    echo "usage: gpu_run.sh prepare CACHE | run CACHE OUTPUT" >&2
    exit 2
    ;;
esac
exit $failed
