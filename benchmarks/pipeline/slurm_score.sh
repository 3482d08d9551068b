#!/bin/bash
# Score a dataset on every GPU of a SLURM allocation: one torchrun per node, c10d rendezvous on the first node.
#
#   DATA=/shared/train.jsonl MODEL=/shared/models/base OUT=/shared/scores/xtf sbatch benchmarks/pipeline/slurm_score.sh
#   DATA=... MODEL=... OUT=... sbatch benchmarks/pipeline/slurm_score.sh --method token-cleaning --ref /shared/models/ref
#
# Extra arguments go to `xtf score`. DATA, MODEL and OUT must be on a filesystem every node mounts (the ranks
# check that they all see OUT). The job is requeueable: a requeued or resubmitted job with the same OUT resumes
# from the shards on disk, with any number of nodes. If a node died and left OUT/.xtf-run.lock behind, the next
# run refuses to start until you pass --break-lock (the lock's host is not this node, so it cannot tell the old
# run is gone); a run stopped by SLURM (time limit, scancel, requeue) removes its lock itself.
#SBATCH --job-name=xtf-score
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
: "${DATA:?set DATA}" "${MODEL:?set MODEL}" "${OUT:?set OUT}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# --kill-on-bad-exit: a failing node stops the others at once instead of at the final collective.
srun --kill-on-bad-exit=1 torchrun \
  --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" --rdzv-id "$SLURM_JOB_ID" \
  -m xtf_kernels score "$DATA" --model "$MODEL" --out "$OUT" --no-progress \
  --num-workers $(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE - 1 > 4 ? 4 : SLURM_CPUS_PER_TASK / GPUS_PER_NODE - 1 )) \
  "$@"
