#!/usr/bin/env bash
# A facility simulation split over a Slurm job array, then merged.
#
#   sbatch --array=0-7 deploy/slurm-array.sh benches/scenarios/facility-racks.toml out/run
#
# Each array task simulates shard I of N (N = the array's size, I = its task id) into
# OUT/shards-of-the-run; the last task to finish is not known in advance, so the merge runs as a
# second job that waits for the whole array:
#
#   jid=$(sbatch --parsable --array=0-7 deploy/slurm-array.sh SCENARIO OUT)
#   sbatch --dependency=afterok:$jid --export=ALL,MERGE=1 deploy/slurm-array.sh SCENARIO OUT
#
# The merged result (OUT/merged) equals the unsplit run for the same seed (docs/outputs.md).
# POWERSYNTH_BIN points at the folder holding the `simulate` and `merge-shards` binaries
# (default: target/release of this checkout, built with `cargo build --release`).
#SBATCH --job-name=powersynth
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=powersynth-%A_%a.log
set -euo pipefail

scenario=${1:?usage: slurm-array.sh SCENARIO.toml OUT_DIR}
out=${2:?usage: slurm-array.sh SCENARIO.toml OUT_DIR}
bin=${POWERSYNTH_BIN:-target/release}

if [[ "${MERGE:-0}" == "1" ]]; then
    exec "$bin/merge-shards" "$out/shards" --out "$out/merged"
fi

index=${SLURM_ARRAY_TASK_ID:?run as an array job: sbatch --array=0-N-1}
count=${SLURM_ARRAY_TASK_COUNT:?run as an array job: sbatch --array=0-N-1}
# Arrays may start above 0 (--array=1-8): shards are numbered from the lowest task id.
index=$((index - ${SLURM_ARRAY_TASK_MIN:-0}))
exec "$bin/simulate" --scenario "$scenario" --shard "$index/$count" --out "$out/shards"
