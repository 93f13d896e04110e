#!/usr/bin/env bash
# The GPU checks of the benchmarks issue in one run, for a lent CUDA machine with spare cores.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Each step writes OUT_DIR/<step>.log and a line "<step> rc=N seconds=S" to OUT_DIR/summary.txt; a
# failing step is recorded and the next one still runs. The steps' time limits add up to 9 minutes
# (not measured per step yet: the summary's seconds on the next lease should set them).
# OUT_DIR/machine.txt: nvidia-smi, cores, load.
#   versions  torch / CUDA / OpenCV versions, the GPU, and that the benchmarks import
#   tests     the CUDA-only tests (device-side scaling, augmentation, normalisation against the CPU;
#             the trainer on CUDA with AMP, channels_last and loader workers, its model then
#             checked against the CPU; the trainer's own torch.compile; fp16 through the gradient
#             scaler), the batch ring, whose copies go to pinned memory, and prediction waiting for the
#             GPU once, not per batch
#   train     bench_train on CUDA only (a 112 px and a 224 px model): fp32, bf16, bf16 + channels_last,
#             + torch.compile (last; a failing configuration is printed and skipped), each fed by the
#             real loader with 8 workers over 20,000 samples (the fraction of time the GPU waits for
#             data, timed after the batches decoded ahead during the first step)
#   profile   bench_train --profile: torch.profiler over 10 steps of three settings at batch 128; the
#             busiest host and device ops, and the device's busy share of a step
#   loader    bench_loader with 0-8 workers: scaling with workers on a machine with spare cores (4,000
#             samples, the fewest that keep 8 workers busy; limit 110 s; tests' 135 s: 33 tests took 84 s on
#             2026-12-04, the step now runs more CUDA tests)
# An OpenCV without IMREAD_COLOR_RGB (before 4.11) fails the `versions` step; BENCHMARKS.md ("Running
# the GPU checks") gives the device call that brings OpenCV 5 along as a wheel. The image has no
# DVCLive (nor the dvc it needs): the trainer then logs into the in-memory stand-in
# bench/gpu_stubs/dvclive, put on PYTHONPATH only when the real one is missing.
set -u -o pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
out=$(mkdir -p "$out" && cd "$out" && pwd)          # absolute: the steps run from the repository root
: >"$out/summary.txt"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
if ! "$py" -c "import dvclive" 2>/dev/null; then
    echo "dvclive missing: the trainer logs into bench/gpu_stubs/dvclive (in memory)" | tee "$out/stubs.txt"
    export PYTHONPATH="$PWD/bench/gpu_stubs:$PYTHONPATH"
fi

step() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$out/summary.txt"
    tail -n 30 "$out/$name.log"
}

{ nvidia-smi; nproc; cat /proc/loadavg; } >"$out/machine.txt" 2>&1
step versions 30 "$py" -c "
import cv2, numpy, pytest, torch, torchvision
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__,
      'opencv', cv2.__version__, 'numpy', numpy.__version__)
assert hasattr(cv2, 'IMREAD_COLOR_RGB'), 'OpenCV ' + cv2.__version__ + ' lacks IMREAD_COLOR_RGB: bring OpenCV 5'
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')
import bench.bench_loader, bench.bench_train
import importlib.util
print('benchmarks import; simplejpeg', 'present' if importlib.util.find_spec('simplejpeg') else
      'missing (JPEGs decode through OpenCV, damage unheard)')"
step tests 135 "$py" -m pytest -q -p no:cacheprovider -rs --durations=5 tests/fermodels/test_wire.py \
    tests/fermodels/test_batchring.py \
    tests/fermodels/test_evaluate.py::test_prediction_waits_for_the_gpu_once_not_per_batch \
    tests/fermodels/test_evaluate.py::test_a_face_scores_alike_in_any_batch_on_a_gpu_in_full_float32 \
    tests/fermodels/test_train.py::test_training_on_cuda_with_amp_and_channels_last \
    tests/fermodels/test_train.py::test_training_on_cuda_compiled_saves_the_plain_model \
    tests/fermodels/test_train.py::test_fp16_autocast_on_cuda_trains_through_the_gradient_scaler
# --threads 0: torch's default threads in the main process, as the trainer runs (bench_train's default of 1
# suits the 2-vCPU VM; on the H200 the main process's pool halved the loader inside bench_train)
step train 205 "$py" bench/bench_train.py --devices cuda --models resnet18_112,convcut --workers 8 --samples 20000 \
    --threads 0
step profile 60 "$py" bench/bench_train.py --devices cuda --steps 10 --threads 0 \
    --profile resnet18_112/fp32,resnet18_112/bf16+cl,convcut/bf16+cl
step loader 110 "$py" bench/bench_loader.py --inputs image@112,image@224 --workers 0,1,2,4,8 --repeats 1
cat "$out/summary.txt"
