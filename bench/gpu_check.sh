#!/usr/bin/env bash
# Everything that needs a GPU, in one go, ending with one table:
#   - the CUDA tests (pytest -m cuda: the text path, fp16/bf16 and a whole request on CUDA,
#     determinism with deterministic algorithms);
#   - a command-line request in fp16 and in bf16 on CUDA;
#   - every benchmark in bench/ (tests/test_docs_cli.py checks that a step runs each
#     bench/*.py script but timing.py, the shared helper): latency, text embeddings,
#     CLIPure-Diff latency, the audit's latency, and batch evaluation throughput with the
#     release's setting (batch 2, fp16) beside ours. Each benchmark prints the flags it ran
#     with first ("flags: ..."), and the table keeps that line beside the figures.
#
#   bash bench/gpu_check.sh          # on a machine with CUDA (run from anywhere)
#   bash bench/gpu_check.sh --cpu    # the same steps on CPU with small settings: checks the
#                                    # script itself; the CUDA-only steps are listed, not run
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECK_STEPS
# (AutoAttack steps in the throughput benchmark; default 10, the paper uses 100),
# GPU_CHECK_ONLY (an extended regex: run only the steps whose names match, e.g. 'latency').
# Each step's full output is kept under $GPU_CHECK_LOGS (default: a new temporary folder).
# Exit code: the number of failed steps (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=cuda
if [ "${1:-}" = "--cpu" ]; then
  mode=cpu
elif [ -n "${1:-}" ]; then
  echo "usage: bash bench/gpu_check.sh [--cpu]" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # random weights only: nothing to download
logs=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
steps=${GPU_CHECK_STEPS:-10}

if [ "$mode" = cuda ]; then
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "No CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False)." >&2
    echo "Run this on a GPU machine, or 'bash bench/gpu_check.sh --cpu' to check the script." >&2
    exit 2
  fi
  device=cuda
  gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
  card=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))")
  latency=(--device cuda)
  text=(--device cuda)
  diff=(--device cuda)
  audit=(--device cuda)
  throughput=(--device cuda --steps "$steps")
  [ "$gpus" -ge 2 ] || throughput+=(--skip-scaling)  # 2 processes need one GPU each
else
  device=cpu
  card="CPU, $("$PYTHON" -c "import torch; print(torch.get_num_threads())") threads (--cpu: a check of this script)"
  latency=(--device cpu --repeats 1)
  text=(--device cpu --repeats 1 --labels 1 --imagenet-sample 2)
  diff=(--device cpu --model ViT-B-32 --repeats 1)
  audit=(--device cpu --steps 1 --square-queries 2 --conditions clean,transfer)
  throughput=(--device cpu --steps 1 --n 2 --batch-sizes 1,2 --scaling-n 2 --skip-scaling)
fi

names=() statuses=() seconds=() figures=()
failed=0

# step NAME PATTERN COMMAND...: run COMMAND, keep its output, and put the lines of it that
# match the extended regex PATTERN (its figures) in the table.
step() {
  local name=$1 pattern=$2
  shift 2
  local log="$logs/${name// /_}.log" start=$SECONDS status
  if [ -n "${GPU_CHECK_ONLY:-}" ] && ! [[ $name =~ $GPU_CHECK_ONLY ]]; then
    names+=("$name") statuses+=("not selected (GPU_CHECK_ONLY)") seconds+=(0) figures+=("")
    return
  fi
  echo "=== $name: $*"
  if "$@" >"$log" 2>&1; then status=ok; else status="FAILED (exit $?)"; failed=$((failed + 1)); fi
  cat "$log"
  names+=("$name") statuses+=("$status") seconds+=($((SECONDS - start)))
  figures+=("$(grep -E "$pattern" "$log" | sed 's/  */ /g' | paste -sd ';' -)")
}

# not_here NAME: a step that needs CUDA, listed in --cpu mode.
not_here() {
  names+=("$1") statuses+=("needs CUDA: not run") seconds+=(0) figures+=("")
}

if [ "$mode" = cuda ]; then
  step "CUDA tests" "passed|failed|error" "$PYTHON" -m pytest -q -m cuda tests
  for precision in fp16 bf16; do
    step "request $precision" "time:|->" "$PYTHON" -m clipure_core predict assets/chelsea.png \
      --labels cifar10 --pretrained random --device cuda --precision "$precision" --steps 10 \
      --threat bpda
  done
else
  not_here "CUDA tests"
  not_here "request fp16"
  not_here "request bf16"
fi
step "latency" "flags:|ratio" "$PYTHON" bench/latency.py "${latency[@]}"
step "text embeddings" "flags:|faster|ratio|ImageNet" "$PYTHON" bench/text_embeddings.py "${text[@]}"
step "Diff latency" "flags:|ratio" "$PYTHON" bench/diff_latency.py "${diff[@]}"
step "audit latency" "flags:|audit of one photo|unit costs|fp16 gradient" "$PYTHON" \
  bench/audit_latency.py "${audit[@]}"
step "eval throughput" "flags:|batch|setting|processes" "$PYTHON" bench/eval_throughput.py \
  "${throughput[@]}"

echo
echo "GPU check on $card ($device); logs in $logs"
printf '| %s | %s | %s | %s |\n' step status seconds figures
printf '|---|---|---|---|\n'
for i in "${!names[@]}"; do
  printf '| %s | %s | %s | %s |\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" \
    "${figures[$i]}"
done
exit "$failed"
