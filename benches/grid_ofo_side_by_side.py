#!/usr/bin/env python3
"""Closed loop on IEEE 13 with OFO, powersynth against the peer (openg2g 0.2.0.post1 +
OpenDSS), on benches/scenarios/ieee13-ofo.toml, for several seeds.

The two tools draw their power traces, server layouts and ITL samples from different random
generators, so single runs agree only in distribution; the OFO loop amplifies small power
differences near the 0.95 pu bound into different snap decisions. The comparison is therefore
per seed and over the seeds' mean.

Run (the peer in a scratch virtualenv with `pip install openg2g==0.2.0.post1
opendssdirect.py==0.9.4 pyarrow`):

    cargo build --release --bin simulate
    /path/to/venv/bin/python benches/grid_ofo_side_by_side.py --seeds 0 1 2 3 4 \
        --out out/grid-ofo-side-by-side

Writes OUT/summary.json (per seed and mean: violation integral, time in violation, worst
voltages, mean batch per model, wall times and their ratio) and OUT/series.parquet, plot-ready:
one row per grid step and tool (who, seed, t_s, v_min_pu over the monitored bus-phases,
v_671_a/b/c, batch_ModelA/B, power_kw_a/b/c). Prints the summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "benches/scenarios/ieee13-ofo.toml"
PEER = ROOT / "benches/openg2g_grid_ofo.py"
SIMULATE = ROOT / "target/release/simulate"
MODELS = ("ModelA", "ModelB")


def run_ours(seed: int, out: Path) -> dict:
    res = subprocess.run(
        [str(SIMULATE), "--scenario", str(SCENARIO), "--seed", str(seed), "--out", str(out), "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    line = json.loads(res.stdout.strip().splitlines()[-1])
    g = line["grid"]
    models = pq.read_table(out / "models/part-0.parquet").to_pandas()
    mean_batch = {m: float(models[models.model == m]["batch_size"].mean()) for m in MODELS}
    return {
        "violation_integral_pu_s": g["violation_integral_pu_s"],
        "time_in_violation_s": g["time_in_violation_s"],
        "min_voltage_pu": g["min_voltage_pu"],
        "max_voltage_pu": g["max_voltage_pu"],
        "mean_batch": mean_batch,
        "wall_s": line["wall_s"],
    }


def series_ours(seed: int, out: Path):
    grid = pq.read_table(out / "grid/part-0.parquet").to_pandas()
    grid["bus"] = grid["bus"].astype(str)
    v_min = grid.groupby("t_s")["v_pu"].min()
    dc = grid[grid.bus == "671"].pivot(index="t_s", columns="phase", values="v_pu")
    models = pq.read_table(out / "models/part-0.parquet").to_pandas()
    models["model"] = models["model"].astype(str)
    batch = models.pivot(index="t_s", columns="model", values="batch_size")
    steps = pq.read_table(out / "steps/part-0.parquet").to_pandas().set_index("t_s")
    rows = {
        "t_s": list(v_min.index),
        "v_min_pu": list(v_min.values),
        "v_671_a": list(dc[1].values),
        "v_671_b": list(dc[2].values),
        "v_671_c": list(dc[3].values),
    }
    for m in MODELS:
        rows[f"batch_{m}"] = [int(x) for x in batch[m].reindex(v_min.index).values]
    for p in "abc":
        rows[f"power_kw_{p}"] = list(steps[f"power_{p}_w"].reindex(v_min.index).values / 1000.0)
    return rows


def run_peer(python: str, seed: int, out: Path) -> dict:
    res = subprocess.run(
        [python, str(PEER), str(SCENARIO), "--seed", str(seed), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "violation_integral_pu_s": d["hand"]["violation_integral_pu_s"],
        "time_in_violation_s": d["hand"]["violation_time_s"],
        "min_voltage_pu": d["hand"]["worst_vmin_pu"],
        "max_voltage_pu": d["hand"]["worst_vmax_pu"],
        "mean_batch": d["mean_batch_by_model"],
        "wall_s": d["wall_s"],
    }


def series_peer(out: Path):
    t = pq.read_table(out / "grid.parquet").to_pandas()
    vcols = [c for c in t.columns if c.startswith("v_")]
    rows = {
        "t_s": list(t["time_s"].values),
        "v_min_pu": list(t[vcols].min(axis=1).values),
        "v_671_a": list(t["v_671_a"].values),
        "v_671_b": list(t["v_671_b"].values),
        "v_671_c": list(t["v_671_c"].values),
    }
    for m in MODELS:
        rows[f"batch_{m}"] = [int(x) for x in t[f"batch_{m}"].values]
    for p in "abc":
        rows[f"power_kw_{p}"] = list(t[f"power_kw_{p}"].values)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default=str(ROOT / "out/grid-ofo-side-by-side"))
    ap.add_argument("--peer-python", default=sys.executable)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours_dir, peer_dir = Path(tmp) / f"ours-{seed}", Path(tmp) / f"peer-{seed}"
            ours = run_ours(seed, ours_dir)
            peer = run_peer(args.peer_python, seed, peer_dir)
            per_seed.append({"seed": seed, "powersynth": ours, "peer": peer})
            for who, rows in (("powersynth", series_ours(seed, ours_dir)), ("peer", series_peer(peer_dir))):
                n = len(rows["t_s"])
                rows = {"who": [who] * n, "seed": [seed] * n, **rows}
                tables.append(pa.table(rows))
            print(json.dumps(per_seed[-1]), file=sys.stderr)
    pq.write_table(pa.concat_tables(tables), out / "series.parquet")

    def mean(who: str, key: str, model: str | None = None) -> float:
        vals = [s[who]["mean_batch"][model] if model else s[who][key] for s in per_seed]
        return statistics.fmean(vals)

    summary = {"seeds": args.seeds, "per_seed": per_seed, "mean": {}}
    for key in ("violation_integral_pu_s", "time_in_violation_s", "min_voltage_pu", "wall_s"):
        a, b = mean("powersynth", key), mean("peer", key)
        summary["mean"][key] = {"powersynth": a, "peer": b, "relative": a / b - 1.0}
    for m in MODELS:
        a, b = mean("powersynth", "", m), mean("peer", "", m)
        summary["mean"][f"mean_batch_{m}"] = {"powersynth": a, "peer": b, "relative": a / b - 1.0}
    summary["speedup"] = mean("peer", "wall_s") / mean("powersynth", "wall_s")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["mean"] | {"speedup": summary["speedup"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
