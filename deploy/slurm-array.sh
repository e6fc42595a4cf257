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
#
# KIND=build-dataset runs a pipeline's model groups the same way (the first argument is then
# the pipeline file; shards and merge share OUT, which ends up as the unsplit run's folder):
#
#   jid=$(sbatch --parsable --array=0-7 --export=ALL,KIND=build-dataset deploy/slurm-array.sh \
#         pipelines/leaderboard.toml out/dataset)
#   sbatch --dependency=afterok:$jid --export=ALL,KIND=build-dataset,MERGE=1 \
#         deploy/slurm-array.sh pipelines/leaderboard.toml out/dataset
# POWERSYNTH_BIN points at the folder holding the `simulate` and `merge-shards` binaries
# (default: target/release of this checkout, built with `cargo build --release`).
#SBATCH --job-name=powersynth
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=powersynth-%A_%a.log
set -euo pipefail

input=${1:?usage: slurm-array.sh SCENARIO.toml|PIPELINE.toml OUT_DIR}
out=${2:?usage: slurm-array.sh SCENARIO.toml|PIPELINE.toml OUT_DIR}
bin=${POWERSYNTH_BIN:-target/release}
kind=${KIND:-simulate}

if [[ "${MERGE:-0}" == "1" ]]; then
    case "$kind" in
        simulate) exec "$bin/merge-shards" "$out/shards" --out "$out/merged" ;;
        build-dataset) exec "$bin/build-dataset" --pipeline "$input" --out "$out" --merge-shards -q ;;
        *) echo "KIND=$kind: expected simulate or build-dataset" >&2; exit 2 ;;
    esac
fi

index=${SLURM_ARRAY_TASK_ID:?run as an array job: sbatch --array=0-N-1}
count=${SLURM_ARRAY_TASK_COUNT:?run as an array job: sbatch --array=0-N-1}
# Arrays may start above 0 (--array=1-8): shards are numbered from the lowest task id.
index=$((index - ${SLURM_ARRAY_TASK_MIN:-0}))
case "$kind" in
    simulate) exec "$bin/simulate" --scenario "$input" --shard "$index/$count" --out "$out/shards" -q ;;
    build-dataset) exec "$bin/build-dataset" --pipeline "$input" --shard "$index/$count" --out "$out" -q ;;
    *) echo "KIND=$kind: expected simulate or build-dataset" >&2; exit 2 ;;
esac
