#!/usr/bin/env bash
# The GPU checks for a machine lent with a GPU, in one call: the GPU tests, the GPU benchmark, and the step stage
# with the paper's pair (MobileFaceNet student, iresnet50 teacher). Such a machine may have torch, numpy, Pillow,
# pyarrow, sklearn, pyyaml, tqdm, safetensors and huggingface_hub, but no DALI, simplejpeg or webdataset, and
# no way to download anything.
#
#   here:   bash bench/gpu_check.sh prepare     # .whl/: simplejpeg, webdataset, braceexpand for CPython 3.12
#   there:  DALI_WHEELS=DIR bash bench/gpu_check.sh run
#
# `run` reads these environment variables (all optional):
#   DALI_WHEELS  a folder of wheels: DALI for the machine's CUDA and the wheels it needs. `run` installs them into
#                SITE before anything else. DALI is too large for `prepare` to fetch with the small wheels: bring
#                the folder to the machine beforehand. Without DALI_WHEELS, DALI must already be importable (for
#                instance installed into SITE); where it is not, the GPU tests say that they skipped.
#   SITE         where `run` installs the wheels, put first on PYTHONPATH (default /tmp/site).
#   OUT          where `run` writes gpu_env.txt, gpu_tests.log, bench_gpu.json/.md, bench_step_ir50.json and
#                bench_convert.json (default ./gpu-results).
# Each step has its own time limit, so one that hangs cannot take the others' device time.
set -uo pipefail

case "${1:-}" in
prepare)
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl simplejpeg==1.9.0 webdataset==1.0.2 braceexpand==0.1.7 2>&1 | grep -v "is ignored" || true
  ls .whl/simplejpeg-*.whl .whl/webdataset-*.whl .whl/braceexpand-*.whl >/dev/null || { echo "prepare: a wheel is missing" >&2; exit 1; }
  du -sh .whl
  ;;
run)
  out="${OUT:-gpu-results}"
  site="${SITE:-/tmp/site}"
  mkdir -p "$out"
  if [ -n "${DALI_WHEELS:-}" ]; then
    compgen -G "$DALI_WHEELS/*.whl" >/dev/null || { echo "run: DALI_WHEELS=$DALI_WHEELS holds no .whl" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$DALI_WHEELS"/*.whl || exit 1
  fi
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
  {
    nvidia-smi -L 2>&1
    python3 - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda available", torch.cuda.is_available())
for name in ("nvidia.dali", "simplejpeg", "webdataset"):
    try:
        module = __import__(name, fromlist=["__version__"])
        print(name, getattr(module, "__version__", "?"))
    except ImportError as err:
        print(name, "MISSING:", err)
EOF
  } 2>&1 | tee "$out/gpu_env.txt"
  # The GPU tests say what they skipped (-rs) when DALI or CUDA is missing.
  failed=0
  timeout 100 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/pipeline 2>&1 | tee "$out/gpu_tests.log" || failed=1
  timeout 200 python3 -m bench --device cuda --stages pipeline,step --repeats 3 --no-progress \
    --json "$out/bench_gpu.json" --markdown "$out/bench_gpu.md" 2>&1 | tail -25 || failed=1
  timeout 150 python3 -m bench --device cuda --stages step --student mobilefacenet --teacher iresnet50 \
    --images 3000 --repeats 3 --no-progress --json "$out/bench_step_ir50.json" 2>&1 | tail -12 || failed=1
  # The convert stage on a machine with more cores: conversion against copying the .rec (needs no GPU; last, as it
  # matters least).
  timeout 110 python3 -m bench --stages convert --images 50000 --repeats 2 --no-progress \
    --json "$out/bench_convert.json" 2>&1 | tail -8 || failed=1
  exit "$failed"
  ;;
*)
  echo "usage: bash bench/gpu_check.sh prepare|run" >&2
  exit 2
  ;;
esac
