#!/usr/bin/env bash
# The unmeasured GPU rows of docs/performance.md (issue 13), prepared for one H200 with 16 cores.
#
#   bash scripts/bench_gpu.sh rollout   # ~2 min: rollout rows (engine in-process and with 7/15 env
#                                       #   workers) vs the 16-core env-only ceiling
#   bash scripts/bench_gpu.sh updates   # ~7 min: ODT and ODT+TD3 online updates/s (defaults: compiled, device sampler;
#                                       #   then eager; then the host sampler) vs pretraining at the paper's
#                                       #   size (4x512, batch 256), issue 13 item 1
#   bash scripts/bench_gpu.sh jobs      # ~6 min: k = 1, 2, 4, 8 concurrent DT pretraining jobs on the
#                                       #   GPU (the paper's 4x512 DT, batch 256, bf16, compiled)
#
# Each stage prints the machine and commit first and writes its table under ${OUT:-results/bench}/.
# Run each stage as its own command (each stays under 10 minutes); copy the tables into
# docs/performance.md with the header lines.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cores; $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
case "${1:-}" in
  rollout)
    # GRPO-DT-style rollouts record simulator states and contexts (batched+rec rows); 256 envs = a
    # large group batch. The env-only x16 row is the all-cores ceiling the issue's target refers to.
    python scripts/bench_rollout.py --device cuda --layers 4 --embed 512 --heads 4 --context-len 20 \
      --act-context 5 --envs 64 256 --steps 200 --sequential-episodes 2 --workers 7 15 \
      | tee "$OUT/rollout_gpu.txt" ;;
  updates)
    # The methods' defaults (compiled, bf16, windows drawn on the device) beside pretraining, then
    # each switch back alone: eager (compile off, the default before issue 13) and the host sampler.
    python scripts/bench_online_updates.py --device cuda --layers 4 --embed 512 --heads 4 --context 20 \
      --batch 256 --updates 300 --warmup 30 | tee "$OUT/online_updates_gpu.txt"
    python scripts/bench_online_updates.py --device cuda --layers 4 --embed 512 --heads 4 --context 20 \
      --batch 256 --updates 300 --warmup 30 --compile off --no-pretrain \
      | tee -a "$OUT/online_updates_gpu.txt"
    python scripts/bench_online_updates.py --device cuda --layers 4 --embed 512 --heads 4 --context 20 \
      --batch 256 --updates 300 --warmup 30 --sampler host --no-pretrain \
      | tee -a "$OUT/online_updates_gpu.txt" ;;
  jobs)
    # Summed steady-state updates/s over k jobs sharing the GPU; also run it with CUDA MPS started
    # (nvidia-cuda-mps-control -d) and compare.
    python scripts/bench_jobs_per_gpu.py --k 1 2 4 8 --json "$OUT/jobs_per_gpu.json" -- --device cuda \
      --layers 4 --embed 512 --heads 4 --context 20 --batch 256 --amp bf16 --updates 1500 --warmup 30 \
      | tee "$OUT/jobs_per_gpu.txt" ;;
  *) echo "usage: $0 rollout|updates|jobs" >&2; exit 2 ;;
esac
