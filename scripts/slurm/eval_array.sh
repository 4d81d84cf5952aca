#!/bin/bash
# One evaluation spread over a SLURM job array: one array task per shard, each on one GPU, all writing
# into one run folder; the last shard to finish merges. Submit with scripts/slurm/submit.sh (which also
# queues a merge job that runs if any shard failed), or by hand:
#
#   sbatch --array=0-7 scripts/slurm/eval_array.sh results/coco-fare4 --vlm llava --encoder fare4 --task coco \
#          --attack ensemble --eps 4/255
#
# A preempted or failed task is resubmitted as is (`scontrol requeue`, or sbatch --array=<i>): it takes the
# batches nobody has finished, and continues an attack from its saved state. Adjust the #SBATCH lines
# to your cluster.
#SBATCH --job-name=vlm_eval
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

run_dir=${1:?usage: sbatch --array=0-N eval_array.sh RUN_DIR [vlm_eval options]}
shift
n_shards=$(( SLURM_ARRAY_TASK_MAX + 1 ))
exec python -m vlm_eval "$@" --output-dir "$run_dir" --shard "${SLURM_ARRAY_TASK_ID}/${n_shards}"
