#!/usr/bin/env bash
# The GPU session's one command (docs/benchmarks.md "GPU figures", docs/detection.md round 33), run on
# a lent H200 from the repo root, with the machine's own torch and transformers:
#   OUT=/some/dir bash benchmarks/device_check.sh
# Needs, carried from the developer machine (both ignored by git: add them to .git/info/exclude):
#   .whl/     wheels the image lacks, for its Python 3.12, and this package's own:
#             pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#               --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#               duckdb==2.0.1 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#             .venv/bin/pip wheel --no-deps --no-build-isolation -w .whl .   # rebuild after every change
#   .cwcache/ the bundled tokenizer and warm start (cp -r ~/.cache/collapsewatch .cwcache), so the
#             runs start from the weights the CPU rounds used
# and the device tool's `carry: [".whl", ".cwcache"]`. Everything it measures lands in $OUT; each
# stage has its own time limit and a failing stage does not stop the others. 2026-12-04 on an H200:
# 419 s of the 560 allowed.
set -u
OUT=${OUT:-/tmp/cw-out}
REPO=$(pwd)
SECONDS_FOR_RUNS=${SECONDS_FOR_RUNS:-400}
DEVICE=${DEVICE:-cuda}  # cpu, STAGES=runs and TRAIN_ARGS="--steps 2": a dry run of the plumbing anywhere
STAGES=${STAGES:-install runs tests bench}
TRAIN_ARGS=${TRAIN_ARGS:-}
mkdir -p "$OUT" /tmp/cw && cd /tmp/cw || exit 1
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 COLLAPSEWATCH_CACHE=$REPO/.cwcache

[[ $STAGES == *install* ]] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$REPO"/.whl/*.whl
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
# the source tree's collapsewatch/ would shadow the installed package (hooks/ etc. are mapped into it)
# for tests that run `python -m` from the repo; it goes back on exit, so a checkout is left as it was
ASIDE=$(mktemp -d)
mv "$REPO/collapsewatch" "$ASIDE/" && trap 'mv "$ASIDE/collapsewatch" "$REPO/"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, pyarrow; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.is_available())"

# 1. round 33: the bundled recipes on CUDA (bf16 autocast), cpu-size model from the carried warm start,
#    all at once on the one GPU; plus the gpu-size model (its own warm start, built here)
RUNS=/tmp/cw/r33
mkdir -p "$RUNS" "$OUT/logs"
train() {  # recipe seed [extra args]
  local recipe=$1 seed=$2
  shift 2
  timeout "$SECONDS_FOR_RUNS" collapsewatch train --recipe "$recipe" --seed "$seed" --device "$DEVICE" \
    --out "$RUNS" --no-progress --set eval_tasks=16 $TRAIN_ARGS "$@" >"$OUT/logs/$(basename "$RUNS")-$recipe-s$seed.log" 2>&1
  local rc=$?
  echo "train $(basename "$RUNS") $recipe s$seed exit $rc"
}
pids=()  # a bare `wait` would also wait for the tee above
for seed in 300 301 302 303 304 305; do train collapse "$seed" --model-size cpu & pids+=($!); done
for seed in 300 301; do train interleaved "$seed" --model-size cpu & pids+=($!); done
mkdir -p /tmp/cw/r33gpu
(RUNS=/tmp/cw/r33gpu train collapse 300 --model-size gpu) & pids+=($!)

# 2. (alongside) tests that touch CUDA or the trainer, under this machine's torch/transformers/pyarrow
[[ $STAGES == *tests* ]] && (cd "$REPO" && timeout 300 pytest -q -p no:cacheprovider -n 3 -s tests/trainer tests/hooks/test_hooks_capture_math.py \
  tests/hooks/test_hooks_trl.py tests/hooks/test_hooks_recorder.py tests/diagnostics >"$OUT/logs/pytest.log" 2>&1
  echo "pytest exit $?"; grep -h "cuda sampler-trainer" "$OUT/logs/pytest.log") & pids+=($!)

# 3. timing figures (measured while the runs above share the GPU: ratios within one process)
[[ $STAGES == *bench* ]] && timeout 90 python3 "$REPO/benchmarks/capture_share.py" --device cuda \
  >"$OUT/logs/capture_share.log" 2>&1
echo "capture_share exit $?"; tail -1 "$OUT/logs/capture_share.log"
[[ $STAGES == *bench* ]] && timeout 150 python3 "$REPO/benchmarks/hook_overhead.py" --device cuda --steps 16 --hidden 896 --layers 24 \
  --heads 14 >"$OUT/logs/hook_overhead.log" 2>&1
echo "hook_overhead exit $?"; tail -1 "$OUT/logs/hook_overhead.log"
[[ $STAGES == *bench* ]] && timeout 120 python3 "$REPO/benchmarks/trainer_vs_trl.py" --device cuda --steps 5 >"$OUT/logs/trainer_vs_trl.log" 2>&1
echo "trainer_vs_trl exit $?"; tail -1 "$OUT/logs/trainer_vs_trl.log"

wait "${pids[@]}"
# 4. what comes back: scans, the feature archive, and the runs without checkpoints or weights
scans=()
for run in "$RUNS"/* /tmp/cw/r33gpu/*; do
  timeout 60 collapsewatch scan "$run" --json >"$OUT/logs/scan-$(basename "$run")$([[ $run == *r33gpu* ]] && echo -gpu).json" 2>&1 &
  scans+=($!)
done
wait "${scans[@]}"
timeout 120 python3 "$REPO/benchmarks/detection_eval.py" --root "$RUNS" --collapsing collapse --stable interleaved \
  --seeds 300 301 302 303 304 305 --plots '' --archive /tmp/cw/features --preset LSF >"$OUT/logs/detection_eval.log" 2>&1
echo "detection_eval exit $?"
tar czf "$OUT/results.tgz" -C /tmp/cw features -C "$OUT" logs 2>/dev/null
# steps, sequences and alerts first, token tables last: if the parts outgrow what comes back, the tail goes
cd /tmp/cw && ls -d r33/*/* r33gpu/*/* | grep -v -E '/(checkpoint|model|tokens)$' >/tmp/cw/first.txt
ls -d r33/*/tokens r33gpu/*/tokens >>/tmp/cw/first.txt
tar czf - -T /tmp/cw/first.txt | split -b 14m - "$OUT/runs.tgz.part-"
ls -la "$OUT"
