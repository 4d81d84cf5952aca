#!/bin/bash
# Submit a sharded evaluation as a SLURM job array, and a merge job that runs once every shard has
# ended (afterany: also after failures, then `merge` says which samples are missing).
#
#   scripts/slurm/submit.sh 8 results/coco-fare4 --vlm llava --encoder fare4 --task coco --attack ensemble
set -euo pipefail

n_shards=${1:?usage: submit.sh N_SHARDS RUN_DIR [vlm_eval options]}
run_dir=${2:?usage: submit.sh N_SHARDS RUN_DIR [vlm_eval options]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable --array=0-$(( n_shards - 1 )) "$here/eval_array.sh" "$run_dir" "$@")
sbatch --dependency=afterany:"$array" --job-name=vlm_eval-merge --time=01:00:00 --cpus-per-task=2 \
       --output="slurm-%j-merge.out" --wrap="python -m vlm_eval merge $run_dir"
echo "shards: job $array ($n_shards tasks); merge queued after them; results in $run_dir"
