#!/usr/bin/env bash
# One s2-vllm run split over a Slurm job array: task I of N runs `--shard I/N` (a stable hash of
# file_id) on its own GPU and writes its own checkpoint; a last job merges the shards.
#
# Submit from the repository (or any folder holding the inputs), with the venv built there:
#
#   mkdir -p logs
#   jid=$(sbatch --parsable --array=0-3 scripts/slurm_array.sh)
#   sbatch --dependency=afterok:$jid --job-name=s2-vllm-merge --output=logs/%x-%j.out \
#          --wrap "bash scripts/slurm_array.sh merge 4"
#
# Each task writes s2_final_descriptions.shard-I-of-4.jsonl (plus its .manifest.json and
# .summary.json). A task that fails, times out or is preempted (--requeue) resumes its own
# checkpoint when it runs again: resubmit the same array, or only the failed indices
# (`sbatch --array=2 scripts/slurm_array.sh`); finished shards are skipped in seconds. The merge
# job writes s2_final_descriptions.json; `export` refuses shards written with different configs
# and reports ids found in more than one checkpoint. Keep the array contiguous from 0 (0-3, not
# 1-4 or 0-7:2): the shard count is SLURM_ARRAY_TASK_COUNT.
#
# Settings (environment variables, exported to the tasks by sbatch):
#   CONFIG     TOML config                       [configs/qwen3-8b.toml]
#   AUDIO      audio descriptions                [audio_descriptions.json]
#   SUBTITLES  subtitles                         [dataset.json]
#   STEM       checkpoint name without .jsonl    [s2_final_descriptions]
#   VENV       virtual environment to activate   [.venv]
#
#SBATCH --job-name=s2-vllm
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail

CONFIG=${CONFIG:-configs/qwen3-8b.toml}
AUDIO=${AUDIO:-audio_descriptions.json}
SUBTITLES=${SUBTITLES:-dataset.json}
STEM=${STEM:-s2_final_descriptions}
VENV=${VENV:-.venv}

if [[ -f "$VENV/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi

if [[ "${1:-}" == merge ]]; then
    count=${2:?usage: slurm_array.sh merge N}
    shards="$STEM.shard-*-of-$count.jsonl"  # quoted: s2-vllm expands the glob itself
    s2-vllm status "$shards"
    s2-vllm export "$shards" -o "$STEM.json" --force
    exit 0
fi

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" || -z "${SLURM_ARRAY_TASK_COUNT:-}" ]]; then
    echo "run this as a job array: sbatch --array=0-3 $0 (see the comment at the top)" >&2
    exit 2
fi

index=$SLURM_ARRAY_TASK_ID
count=$SLURM_ARRAY_TASK_COUNT
echo "shard $index/$count on $(hostname), GPUs ${CUDA_VISIBLE_DEVICES:-none}"

# Exit codes: 0 done, 3 the engine died (checkpoint intact: requeue), 130 stopped by a signal
# (Slurm sends SIGTERM at the time limit or on preemption; the next run resumes).
exec s2-vllm run --config "$CONFIG" --audio "$AUDIO" --subtitles "$SUBTITLES" \
    --shard "$index/$count" -o "$STEM.shard-$index-of-$count.jsonl" --no-progress
