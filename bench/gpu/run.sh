#!/usr/bin/env bash
# The GPU run: every GPU path once, in one command, on a machine without TensorFlow or network access.
#
#   bash bench/gpu/run.sh            # on the GPU machine, from the repository root; results under $OUT
#   bash bench/gpu/run.sh --dry-run  # here: the local onnxruntime, the CPU provider, short cells, OUT=runs/gpu-dry
#
# Needs, beside the source tree: .ortgpu/p0.. (the onnxruntime-gpu wheel in parts, from
# ../shared/device/ort-gpu-parts.sh) and .gpu-bundle/ (the model files, from `python -m vidistill.bench.gpu.prepare`).
# Steps, each timed into $OUT/steps.tsv (a failed step is written down with its exit code, and the run goes on):
# the GPU's name, joining and checking the wheel, installing it into /tmp/site, onnxruntime.preload_dlls() and a CUDA
# session, filling the paper-size graphs' weights, then `vidistill bench` on the CUDA provider for the demo models
# and the paper-size ones. Reports are packed into $OUT/reports.tar.gz after each bench step, so a run stopped by
# its time limit still returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-runs/gpu-dry}
BUNDLE=${BUNDLE:-.gpu-bundle}
REPORTS=${REPORTS:-/tmp/vidistill-gpu-reports}
mkdir -p "$OUT" "$REPORTS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
printf 'step\tseconds\texit\n' > "$OUT/steps.tsv"

step() {  # step NAME COMMAND...: runs it, times it, records its exit code
  local name=$1; shift
  echo "=== $name: $*"
  local started=$(date +%s%N)
  "$@"
  local rc=$?
  local ms=$(( ($(date +%s%N) - started) / 1000000 ))
  printf '%s\t%d.%03d\t%d\n' "$name" $((ms / 1000)) $((ms % 1000)) "$rc" >> "$OUT/steps.tsv"
  [[ $rc -ne 0 ]] && echo "=== $name FAILED (exit $rc)"
  return $rc
}

pack() { tar czf "$OUT/reports.tar.gz" -C "$REPORTS" . 2>/dev/null; }

step machine bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; python3 -V; nproc; free -g | head -2'
if [[ $DRY -eq 0 ]]; then
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
  export WHEEL=/tmp/onnxruntime_gpu-${ORT_GPU_VERSION:-1.31.1}-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
  step join bash -c 'cat .ortgpu/p* > $WHEEL && echo "$(cat .ortgpu/sha256)  $WHEEL" | sha256sum -c -'
  step install python3 -m pip install -q --no-deps --no-index --no-compile --target /tmp/site "$WHEEL"
  PROVIDERS=cuda; DURATION=1; MIN_RUNS=20; TIME_CAP=5; BATCHES=${BATCHES:-1,64,256}
else
  PROVIDERS=cpu; DURATION=0.2; MIN_RUNS=3; TIME_CAP=2; BATCHES=${BATCHES:-1}
fi
check_ort() { python3 -c '
import time, numpy as np, onnxruntime as ort
from vidistill.export.sessions import create_session, gpu_present
from vidistill.bench.runners import _probe_model
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
started = time.perf_counter()
if gpu_present():
    ort.preload_dlls()
    print(f"preload_dlls: {time.perf_counter() - started:.1f} s")
    session = create_session(_probe_model(), "cuda", 1)
    print("CUDA session:", session.get_providers(), session.run(None, {"x": np.ones([2, 2], np.float32)})[0].tolist())
'; }
if ! step onnxruntime check_ort && [[ $DRY -eq 0 ]]; then
  # preload_dlls did not make CUDA load: say why (missing libraries), then put the nvidia-* packages' libraries on the
  # loader's path for the rest of the run, so the benchmark still runs (the report's steps.tsv shows which way it went)
  ldd /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so | grep -i "not found"
  export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(":".join(sorted({r for p in nvidia.__path__ for r, _, fs in os.walk(p) if any(".so" in f for f in fs)})))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  step onnxruntime-ld-library-path check_ort
fi
step fill python3 -m vidistill.bench.gpu.fill "$BUNDLE"/paper-*/*.onnx

bench() {  # bench NAME SECONDS MODELS...: one report per model set, stopped after SECONDS (its rows are kept)
  local name=$1 cap=$2; shift 2
  [[ $DRY -eq 1 ]] && cap=600
  step "bench-$name" timeout "$cap" python3 -m vidistill.cli bench "$@" --providers "$PROVIDERS" --batch "$BATCHES" \
    --duration "$DURATION" --min-runs "$MIN_RUNS" --time-cap "$TIME_CAP" --warmup 3 --input-sets 2 --quiet \
    --report "$REPORTS/$name"
  pack
}
# float files first (the teacher's fp32 is the speed-up baseline), the int8 ones last: on CUDA their quantized LSTMs
# run on the CPU, the slowest cells, so a run cut short by its time limit loses those first
# (the dry run leaves bf16 out: those files are made for CUDA, and the CPU provider has no bf16 kernels for them)
floats="fp32 fp16 bf16"; [[ $DRY -eq 1 ]] && floats="fp32 fp16"
order() { for dir in "$@"; do for p in $floats; do [[ -f "$dir/$p.onnx" ]] && echo "$dir/$p.onnx"; done; done
          for dir in "$@"; do for p in int8-dynamic int8-static; do [[ -f "$dir/$p.onnx" ]] && echo "$dir/$p.onnx"; done; done; }
bench demo 180 $(order "$BUNDLE/demo-teacher" "$BUNDLE/demo-student")
bench paper 300 $(order "$BUNDLE/paper-teacher" "$BUNDLE/paper-student")
cp "$OUT/steps.tsv" "$REPORTS/steps.tsv"; pack
cat "$OUT/steps.tsv"
