#!/usr/bin/env bash
# The GPU checks in one call, for a machine lent with a GPU and no way to download anything: its environment
# (GPU, driver, torch, DALI, torchvision, the decoder in use), the GPU tests, a 60-step training on one GPU
# (DALI, a .bin verification target) and its resume to 90 steps, and the GPU benchmark (pipeline, decode and
# step stages: MobileFaceNet student, iresnet50 teacher, step batch 512, torchvision's nvJPEG decoder as a
# baseline, online vs cached teacher). Each step runs under its own time limit; the limits add up to 455 s.
# `--cpu-dry-run` runs the same steps on the CPU with tiny sizes (small models, a few hundred images, a few
# steps), skipping only what needs CUDA and saying so: `make test` runs it, so a broken script shows there.
#
#   here:   bash bench/gpu_check.sh prepare            # .whl/: simplejpeg, webdataset, braceexpand for CPython 3.12
#   there:  DALI_WHEELS=DIR bash bench/gpu_check.sh run
#   a CPU:  bash bench/gpu_check.sh run --cpu-dry-run  # about 40 s on 2 cores
#
# Such a machine may have torch, torchvision, numpy, Pillow, pyarrow, sklearn, pyyaml, tqdm, safetensors and
# huggingface_hub, but no DALI, simplejpeg or webdataset. `run` reads these environment variables (all optional):
#   DALI_WHEELS  a folder of wheels: DALI for the machine's CUDA and the wheels it needs. `run` installs them into
#                SITE before anything else. DALI is too large for `prepare` to fetch with the small wheels: bring
#                the folder to the machine beforehand. Without DALI_WHEELS, DALI must already be importable (for
#                instance installed into SITE); where it is not, the GPU tests say that they skipped.
#   SITE         where `run` installs the wheels, put first on PYTHONPATH (default /tmp/site; not in a dry run,
#                which installs nothing and uses the environment it finds).
#   OUT          where `run` writes its 8 files (default ./gpu-results): gpu_check.log (every step: its limit,
#                seconds, outcome, and what it skipped), gpu_env.txt, gpu_tests.log, gpu_train.log (training,
#                resume and the resume check), gpu_train_metrics.jsonl, bench_gpu.json, bench_gpu.md, bench_gpu.log.
#   PYTHON       the interpreter (default python3)
#   WORK         where data, runs and caches go (default: a new temporary folder, removed at the end)
# Exit status: 0 when every step passed, 1 when one failed or timed out, 2 for a bad command line.
set -uo pipefail

usage="usage: bash bench/gpu_check.sh prepare | run [--cpu-dry-run]"

case "${1:-}" in
prepare)
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl simplejpeg==1.9.0 webdataset==1.0.2 braceexpand==0.1.7 2>&1 | grep -v "is ignored" || true
  ls .whl/simplejpeg-*.whl .whl/webdataset-*.whl .whl/braceexpand-*.whl >/dev/null || { echo "prepare: a wheel is missing" >&2; exit 1; }
  du -sh .whl
  exit 0
  ;;
run)
  shift
  dry=0
  for arg in "$@"; do
    case "$arg" in
    --cpu-dry-run) dry=1 ;;
    *) echo "bench/gpu_check.sh: error: run: unknown option '$arg'; $usage" >&2; exit 2 ;;
    esac
  done
  ;;
*)
  echo "$usage" >&2
  exit 2
  ;;
esac

mkdir -p "${OUT:-gpu-results}" || exit 1
out=$(cd "${OUT:-gpu-results}" && pwd)
cd "$(dirname "$0")/.." || exit 1  # the repository root: python -m finds the packages here
if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK" && work=$(cd "$WORK" && pwd) || exit 1
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 1
  trap 'rm -rf "$work"' EXIT
fi
py="${PYTHON:-python3}"
summary="$out/gpu_check.log"
: >"$summary"

# Sizes. GPU: 192 identities x 40 = 7680 images; training at batch 256 is 30 steps an epoch (verification at
# the end of each), 60 steps then 90; the step stage's batch of 512 needs 11 x 512 = 5632 images an epoch.
# Dry run: 12 x 16 = 192 images, batch 64: 3 steps an epoch, 6 steps then 9; small models, one round.
if [ "$dry" = 1 ]; then
  device=cpu student=mobilefacenet_s teacher=iresnet_s
  ids=12 per=16 bin_ids=10 pairs=200 batch=64 first=6 until=9 log_every=1 ckpt_every=2
  bench_sizes=(--batch-size 32 --step-batch-size 8 --step-steps 2 --repeats 1 --warmup 0)
else
  device=cuda student=mobilefacenet teacher=iresnet50
  ids=192 per=40 bin_ids=50 pairs=600 batch=256 first=60 until=90 log_every=10 ckpt_every=20
  bench_sizes=(--batch-size 256 --step-batch-size 512 --step-steps 10 --repeats 3 --warmup 1)
fi

say() { echo "$*" | tee -a "$summary"; }
failed=0
# step NAME LIMIT LOG CMD...: CMD under its own time limit, its output appended to LOG; the outcome noted.
step() {
  local name=$1 limit=$2 log=$3 start=$SECONDS rc
  shift 3
  echo "== $name (limit ${limit}s): $*" >>"$log"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    say "$(printf '%-8s limit %3ss  %3ss  ok' "$name" "$limit" $((SECONDS - start)))"
  else
    [ "$rc" = 124 ] && rc="timed out" || rc="exit $rc"
    say "$(printf '%-8s limit %3ss  %3ss  FAILED (%s; see %s)' "$name" "$limit" $((SECONDS - start)) "$rc" \
      "${log##*/}")"
    failed=1
    return 1
  fi
}
skip() { say "$(printf '%-8s skipped: %s' "$1" "$2")"; }

say "bench/gpu_check.sh run$([ "$dry" = 1 ] && echo ' --cpu-dry-run'): device $device, student $student," \
  "teacher $teacher; work $work"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE TQDM_DISABLE=1  # no progress bars in the logs

# 1. install the carried wheels (a dry run uses the environment it finds)
if [ "$dry" = 1 ]; then
  skip install "dry run: nothing installed; $py's environment is used as it is"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  site="${SITE:-/tmp/site}"
  wheels=()
  if [ -n "${DALI_WHEELS:-}" ]; then
    compgen -G "$DALI_WHEELS/*.whl" >/dev/null || { say "install: DALI_WHEELS=$DALI_WHEELS holds no .whl"; exit 1; }
    wheels+=("$DALI_WHEELS"/*.whl)
  fi
  compgen -G ".whl/*.whl" >/dev/null && wheels+=(.whl/*.whl)
  if [ ${#wheels[@]} = 0 ]; then
    skip install "no DALI_WHEELS and no .whl/: the environment is used as it is"
  else
    step install 40 "$summary" "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}"
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. data: training identities (.rec) and held-out pairs (.bin), converted and verified; a fresh teacher file
data_step() {
  set -e
  "$py" -m convert synth "$work/synth" --identities "$ids" --per-identity "$per" --seed 0 --overwrite
  "$py" -m convert synth-bin "$work/verify.bin" --identities "$bin_ids" --pairs "$pairs" --first-identity "$ids" \
    --seed 0
  "$py" -m convert rec "$work/synth" "$work/shards" --seed 0 --quiet --overwrite
  "$py" -m convert verify "$work/shards"
  "$py" -m bench.fresh_teacher "$teacher" "$work/teacher.pth"
}
export -f data_step
export py work ids per bin_ids pairs teacher
data_ok=0
step data 35 "$summary" bash -c data_step && data_ok=1

# 3. the environment, and the decoders in use
env_step() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  else
    echo "nvidia-smi: not on this machine (skipped: it needs a CUDA driver)"
  fi
  "$py" -m bench.env_report --device "$device" ${shards:+--shards "$shards"}
}
export -f env_step
export device shards=""
[ "$data_ok" = 1 ] && shards="$work/shards"
: >"$out/gpu_env.txt"
step env 25 "$out/gpu_env.txt" bash -c env_step
[ "$dry" = 1 ] && skip nvidia-smi "dry run: needs a CUDA driver (said so in gpu_env.txt)"
grep -q "^dali: None" "$out/gpu_env.txt" &&
  say "note: DALI is not installed here: training (data.backend=dali) and the benchmark will fail; bring DALI_WHEELS"

# 4. the GPU tests (they say what they skipped, and why, where CUDA or DALI's CUDA build is missing)
: >"$out/gpu_tests.log"
step tests 60 "$out/gpu_tests.log" "$py" -m pytest -m gpu -q -rs -p no:cacheprovider tests
[ "$dry" = 1 ] && skip gpu-tests "dry run: the tests marked gpu skip themselves without CUDA (reasons in gpu_tests.log)"

# 5. training on one device with DALI and a .bin target, then its resume (same command, a later stop)
train=("$py" -m distill --config configs/synthetic.yaml "output=$work/run" "data.shards=$work/shards" data.backend=dali
       "model.name=$student" "teacher.spec=$work/teacher.pth" "teacher.network=$teacher" distill.teacher_cache=null
       "train.batch_size=$batch" "train.lr_batch=$batch" train.epochs=3 train.warmup_epochs=0 "train.decay_epochs=[3]"
       "train.log_every=$log_every" "train.checkpoint_every=$ckpt_every" train.keep_checkpoints=2
       "eval.targets=[$work/verify.bin]" eval.every_epochs=1)
: >"$out/gpu_train.log"
if [ "$data_ok" != 1 ]; then
  skip train "no data"
  failed=1
elif step train 80 "$out/gpu_train.log" "${train[@]}" "train.max_steps=$first"; then
  cp "$work/run/metrics.jsonl" "$work/metrics_first.jsonl"
  step resume 50 "$out/gpu_train.log" "${train[@]}" "train.max_steps=$until" &&
    step resumed 15 "$out/gpu_train.log" "$py" -m bench.resume_check "$work/run" \
      --snapshot "$work/metrics_first.jsonl" --resumed-at "$first" --until "$until"
  cp "$work/run/metrics.jsonl" "$out/gpu_train_metrics.jsonl"
else
  skip resume "the training before it failed"
  cp "$work/run/metrics.jsonl" "$out/gpu_train_metrics.jsonl" 2>/dev/null
fi

# 6. the benchmark: pipeline, decode and step stages on the device, on the training set's .rec
: >"$out/bench_gpu.log"
if [ "$data_ok" = 1 ]; then
  step bench 150 "$out/bench_gpu.log" "$py" -m bench --device "$device" --stages pipeline,decode,step \
    --data "$work/synth" --cache-dir "$work/bench-cache" --student "$student" --teacher "$teacher" \
    "${bench_sizes[@]}" --no-progress --json "$out/bench_gpu.json" --markdown "$out/bench_gpu.md"
else
  skip bench "no data"
  failed=1
fi

echo
grep -h "resumed, not restarted\|resume_check: error" "$out/gpu_train.log" || true
grep -v "^==" "$out/bench_gpu.log" | tail -45
say "gpu_check: $([ "$failed" = 0 ] && echo 'every step passed' || echo 'a step FAILED'); files in $out"
exit "$failed"
