#!/usr/bin/env bash
# Runs the peer's offline bench and `simulate` on the same scenario, one after the other (quiet
# host: nothing else running), and prints one JSON line per run.
#   PEER_PYTHON=/path/to/venv/bin/python benches/openg2g-side-by-side.sh
# The venv needs `pip install openg2g==0.2.0.post1`. SHARED defaults to ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
PEER_PYTHON=${PEER_PYTHON:-python3}
cargo build --release --bin simulate >/dev/null 2>&1
OUT=$(mktemp -d)
for run in "1000 3600" "10000 3600" "100000 600"; do
  set -- $run
  "$PEER_PYTHON" "$SHARED/bench/openg2g_offline_bench.py" --gpus "$1" --duration "$2" \
      --fit-repeat 1 --itl-samples 1000 --json "$OUT/peer.json" >/dev/null
  python3 -c "import json; d=json.load(open('$OUT/peer.json')); print(json.dumps({'who':'peer','gpus':$1,'duration_s':$2,'dc_steps':d['dc_steps'],'wall_s':d['sim_wall_s'],'dc_steps_per_s':d['dc_steps_per_s'],'mean_facility_power_kw':d['mean_facility_power_kw']}))"
  for mode in --no-output "--out $OUT/run"; do
    ./target/release/simulate --scenario benches/scenarios/openg2g-parity.toml \
        --gpus "$1" --duration-s "$2" $mode | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'who':'powersynth','mode':'$mode'.split()[0],'gpus':$1,'duration_s':$2,'dc_steps':d['dc_steps'],'wall_s':d['wall_s'],'dc_steps_per_s':d['dc_steps_per_s'],'mean_facility_power_kw':d['mean_facility_power_kw']}))"
  done
done
rm -rf "$OUT"
