#!/usr/bin/env python3
"""Closed-loop peer run: openg2g 0.2.0.post1 + OpenDSS (opendssdirect.py 0.9.4) on a powersynth
grid scenario (default benches/scenarios/ieee13-ofo.toml), for comparison with the Rust side.

Run (from the checkout root; needs a virtualenv with openg2g==0.2.0.post1,
opendssdirect.py==0.9.4, pyarrow; no network access is used):

    /tmp/dssenv/bin/python benches/openg2g_grid_ofo.py \
        [benches/scenarios/ieee13-ofo.toml] [--out /tmp/peer-ieee13-ofo] [--duration S] \
        [--ofo-init dc|peer-default]

Reads the scenario TOML:
  * top level: duration_s, seed;
  * [datacenter]: name, dt_s, gpus_per_server, total_gpu_capacity, base_kw_per_phase,
    amplitude_scale_range, noise_fraction;
  * [[models]]: label, gpus_per_replica, initial_batch_size, capacity_share (rounded down to a
    multiple of lcm(gpus_per_server, gpus_per_replica) GPUs, as ../shared/bench/
    openg2g_offline_bench.py does), power.kind = "parametric" (per-GPU level linear in log2 b
    between level_w at the smallest/largest batch, sine ripples [amplitude W, period s],
    Gaussian noise noise_sd_w, clip_w, trace_s at trace_dt_s, one numpy PCG64 stream per model
    seeded with [scenario seed, power.seed]), itl.kind = "parametric" (ITLMixtureModel per batch:
    scale = scale_s·(1 + per_log2_batch·log2 b), stall scale = stall_factor·scale,
    pi_stall = 1 − pi_steady); templates are built for duration_s at the DC dt (as the bench);
  * [grid]: feeder (relative to the TOML file), dt_s, source_pu, pf, taps (RegControl name →
    steps, tap = 1 + 0.00625·steps), datacenter_buses, exclude_buses;
  * [[controllers]] kind = "ofo": dt_s, itl_deadline_s per model, [controllers.fits.<model>]
    power/latency/throughput logistic parameters (L, x0, k, b0) → LogisticModelStore; any
    OFOConfig field written in the controller table overrides the peer default.
Builds OfflineDatacenter + OpenDSSGrid + OFOBatchSizeController and runs them through the peer's
Coordinator (the same reset/start/step/stop sequence and log accumulation as Coordinator.run(),
unrolled so the OpenDSS compile in start() is timed separately).

Writes to --out:
  * grid.parquet: one row per grid step: time_s, v_<bus>_<a|b|c> for every monitored bus-phase
    (the peer's v_index order: phase a of every bus, then b, then c; pu), batch_<model> (batch
    in force at that step, from the DC state of the same tick), power_kw_a/b/c (the DC power
    the grid used at that step);
  * sensitivity.json: the H matrix the OFO estimated (rows = monitored bus-phases, pu/kW);
  * metrics.json (also printed as the last stdout line): voltage metrics hand-computed per
    ../shared/GRID.md "Metrics" and from openg2g.metrics (both reported), batch/ITL statistics,
    grid steps, timings (setup_s, start_s = reset+start incl. OpenDSS compile, loop_s,
    wall_s = reset+start+loop+stop, i.e. Coordinator.run()).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import tomllib
import warnings
from fractions import Fraction
from pathlib import Path

T_IMPORT0 = time.perf_counter()
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import openg2g  # noqa: E402
from mlenergy.data.modeling import ITLMixtureModel, LogisticModel  # noqa: E402
from openg2g.controller.ofo import LogisticModelStore, OFOBatchSizeController, OFOConfig  # noqa: E402
from openg2g.coordinator import Coordinator, SimulationLog  # noqa: E402
from openg2g.datacenter.command import SetBatchSize  # noqa: E402
from openg2g.datacenter.config import (  # noqa: E402
    DatacenterConfig,
    InferenceModelSpec,
    PowerAugmentationConfig,
    ReplicaSchedule,
)
from openg2g.datacenter.offline import OfflineDatacenter, OfflineWorkload  # noqa: E402
from openg2g.datacenter.workloads.inference import (  # noqa: E402
    InferenceData,
    InferenceTrace,
    InferenceTraceStore,
    ITLFitStore,
)
from openg2g.grid.config import TapPosition  # noqa: E402
from openg2g.grid.opendss import OpenDSSGrid  # noqa: E402
from openg2g.metrics.performance import compute_performance_stats  # noqa: E402
from openg2g.metrics.voltage import compute_allbus_voltage_stats  # noqa: E402

IMPORT_S = time.perf_counter() - T_IMPORT0
TAP_STEP = 0.00625
PHASE = {1: "a", 2: "b", 3: "c"}
DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "ieee13-ofo.toml"


def frac(v) -> Fraction:
    return Fraction(str(v)) if not isinstance(v, int) else Fraction(v)


# ------------------------------------------------------------------ synthetic workload data
def per_gpu_trace(p: dict, b: int, bmin: int, bmax: int, t: np.ndarray, rng) -> np.ndarray:
    lo, hi = p["level_w"]
    span = math.log2(bmax) - math.log2(bmin)
    f = (math.log2(b) - math.log2(bmin)) / span if span > 0 else 0.0
    v = np.full(t.size, lo + (hi - lo) * f)
    for amp, period in p.get("ripples", []):
        v = v + amp * np.sin(2 * np.pi * t / period)
    v = v + rng.normal(0.0, float(p.get("noise_sd_w", 0.0)), size=t.size)
    clip = p.get("clip_w")
    return np.clip(v, clip[0], clip[1]) if clip else np.maximum(v, 0.0)


def build_inference(sc: dict, dt: Fraction, deadlines: dict[str, float]):
    seed = int(sc.get("seed", 0))
    specs, traces, itl = [], {}, {}
    for m in sc["models"]:
        label, g, p = m["label"], int(m["gpus_per_replica"]), m["power"]
        if p.get("kind") != "parametric":
            raise SystemExit(f"models.{label}.power.kind = {p.get('kind')!r}: only 'parametric' is supported")
        bs = [int(b) for b in p["batch_sizes"]]
        t = np.arange(0.0, float(p["trace_s"]) + 1e-9, float(p["trace_dt_s"]))
        rng = np.random.default_rng([seed, int(p.get("seed", 0))])
        traces[label] = {
            b: InferenceTrace(t_s=t.copy(), power_w=per_gpu_trace(p, b, min(bs), max(bs), t, rng) * g, measured_gpus=g)
            for b in bs
        }
        q = m.get("itl")
        if q is not None:
            if q.get("kind") != "parametric":
                raise SystemExit(f"models.{label}.itl.kind = {q.get('kind')!r}: only 'parametric' is supported")
            per_b = {}
            for b in bs:
                scale = q["scale_s"] * (1.0 + q["per_log2_batch"] * math.log2(b))
                per_b[b] = ITLMixtureModel(
                    loc=q["loc_s"],
                    pi_steady=q["pi_steady"],
                    sigma_steady=q["sigma_steady"],
                    scale_steady=scale,
                    pi_stall=1.0 - q["pi_steady"],
                    sigma_stall=q["sigma_stall"],
                    scale_stall=scale * q["stall_factor"],
                )
            itl[label] = per_b
        specs.append(
            InferenceModelSpec(
                model_label=label,
                model_id=f"synthetic/{label}",
                gpu_model="H100",
                task="lm-arena-chat",
                gpus_per_replica=g,
                tensor_parallel=g,
                itl_deadline_s=deadlines.get(label, 1.0),
                batch_sizes=tuple(bs),
                feasible_batch_sizes=tuple(bs),
            )
        )
    templates = InferenceTraceStore(traces).build_templates(duration_s=float(sc["duration_s"]), dt_s=dt)
    itl_store = ITLFitStore(itl) if len(itl) == len(specs) else None
    return tuple(specs), InferenceData(tuple(specs), power_templates=templates, itl_fits=itl_store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    ap.add_argument("--out", default="/tmp/peer-ieee13-ofo")
    ap.add_argument("--duration", type=int, default=None, help="override duration_s")
    ap.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    ap.add_argument(
        "--ofo-init",
        choices=("dc", "peer-default"),
        default="dc",
        help="seed the OFO's x with the models' initial_batch_size (dc) or leave the peer's "
        "default (each spec's feasible_batch_sizes[0])",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")

    t_setup0 = time.perf_counter()
    sc_path = Path(args.scenario).resolve()
    sc = tomllib.loads(sc_path.read_text())
    if args.duration is not None:
        sc["duration_s"] = args.duration
    if args.seed is not None:
        sc["seed"] = args.seed
    duration = int(sc["duration_s"])
    seed = int(sc.get("seed", 0))
    d, gr = sc["datacenter"], sc["grid"]
    ctrls = [c for c in sc.get("controllers", []) if c.get("kind") == "ofo"]
    if len(ctrls) != 1 or len(sc.get("controllers", [])) != 1:
        raise SystemExit("need exactly one [[controllers]] with kind = 'ofo'")
    oc = ctrls[0]
    dc_dt = frac(d["dt_s"])

    specs, inference_data = build_inference(sc, dc_dt, {k: float(v) for k, v in oc["itl_deadline_s"].items()})

    gps = int(d["gpus_per_server"])
    cap = int(d["total_gpu_capacity"])
    schedules, replicas = {}, {}
    for m in sc["models"]:
        g = int(m["gpus_per_replica"])
        if "replicas" in m:
            n = int(m["replicas"])
        else:
            step = math.lcm(gps, g)
            n = (int(cap * float(m["capacity_share"])) // step) * step // g
        replicas[m["label"]] = n
        schedules[m["label"]] = ReplicaSchedule(initial=n)
        if m.get("ramps"):
            raise SystemExit("model ramps are not handled by this script")
    init_batch = {m["label"]: int(m["initial_batch_size"]) for m in sc["models"]}
    workload = OfflineWorkload(
        inference_data=inference_data, replica_schedules=schedules, initial_batch_sizes=init_batch
    )
    dc = OfflineDatacenter(
        DatacenterConfig(gpus_per_server=gps, base_kw_per_phase=float(d.get("base_kw_per_phase", 0.0))),
        workload,
        name=d["name"],
        dt_s=dc_dt,
        seed=seed,
        power_augmentation=PowerAugmentationConfig(
            amplitude_scale_range=tuple(d.get("amplitude_scale_range", (1.0, 1.0))),
            noise_fraction=float(d.get("noise_fraction", 0.0)),
        ),
        total_gpu_capacity=cap,
    )

    feeder = (sc_path.parent / gr["feeder"]).resolve()
    taps = {k: 1.0 + TAP_STEP * float(v) for k, v in gr.get("taps", {}).items()}
    excl = tuple(gr.get("exclude_buses", ()))
    grid = OpenDSSGrid(
        dss_case_dir=feeder.parent,
        dss_master_file=feeder.name,
        dt_s=frac(gr["dt_s"]),
        source_pu=gr.get("source_pu"),
        initial_tap_position=TapPosition(regulators=taps) if taps else None,
        exclude_buses=excl,
    )
    buses = gr["datacenter_buses"]
    if set(buses) != {d["name"]}:
        raise SystemExit(f"grid.datacenter_buses {buses} must name exactly the datacenter {d['name']!r}")
    grid.attach_dc(dc, bus=str(buses[d["name"]]), power_factor=float(gr.get("pf", 0.95)))

    fits = oc["fits"]
    lm = lambda q: LogisticModel(L=float(q["L"]), x0=float(q["x0"]), k=float(q["k"]), b0=float(q["b0"]))  # noqa: E731
    store = LogisticModelStore(
        power={k: lm(v["power"]) for k, v in fits.items()},
        latency={k: lm(v["latency"]) for k, v in fits.items()},
        throughput={k: lm(v["throughput"]) for k, v in fits.items()},
    )
    cfg_over = {k: oc[k] for k in OFOConfig.model_fields if k in oc}
    ofo_cfg = OFOConfig(**cfg_over)
    ofo = OFOBatchSizeController(
        specs,
        datacenter=dc,
        grid=grid,
        models=store,
        config=ofo_cfg,
        dt_s=frac(oc["dt_s"]),
        initial_batch_sizes=init_batch if args.ofo_init == "dc" else None,
    )
    coord = Coordinator(datacenters=[dc], grid=grid, controllers=[ofo], total_duration_s=duration)
    setup_s = time.perf_counter() - t_setup0

    # ---- Coordinator.run(), unrolled (identical calls) so start() is timed on its own.
    ratio = Fraction(duration) / coord.clock.tick_s
    assert ratio.denominator == 1
    log: SimulationLog = SimulationLog()
    t0 = time.perf_counter()
    c0 = time.process_time()
    coord.reset()
    coord.start()
    t_started = time.perf_counter()
    try:
        for _ in range(int(ratio)):
            tick = coord.step()
            for name, st in tick.dc_states.items():
                log.record_datacenter(st, dc_name=name)
            if tick.grid_state is not None:
                log.record_grid(tick.grid_state)
            log.record_commands(tick.commands)
            log.events.extend(tick.sim_events)
        t_loop_end = time.perf_counter()
    finally:
        coord.stop()
    wall_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    start_s = t_started - t0
    loop_s = t_loop_end - t_started

    # ---- outputs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gs, ds = log.grid_states, log.dc_states
    v_index = grid.v_index
    labels = [s.model_label for s in specs]
    # DC state per time (dc dt == grid dt here; otherwise the last DC state at or before the step).
    dc_times = np.array([s.time_s for s in ds])
    gtimes = np.array([g.time_s for g in gs])
    idx = np.searchsorted(dc_times, gtimes + 1e-9, side="right") - 1
    cols: dict[str, object] = {"time_s": gtimes}
    V = np.empty((len(gs), len(v_index)))
    for j, (bus, ph) in enumerate(v_index):
        V[:, j] = [getattr(g.voltages[bus], PHASE[ph]) for g in gs]
        cols[f"v_{bus.lower()}_{PHASE[ph]}"] = V[:, j]
    for lab in labels:
        cols[f"batch_{lab}"] = np.array([ds[i].batch_size_by_model[lab] for i in idx], dtype=np.int64)
    for ph in "abc":
        cols[f"power_kw_{ph}"] = np.array([getattr(ds[i].power_w, ph) / 1e3 for i in idx])
    pq.write_table(pa.table(cols), out / "grid.parquet")

    H = ofo._sensitivity_matrix
    (out / "sensitivity.json").write_text(
        json.dumps(
            {
                "rows": [f"{b.lower()}.{PHASE[p]}" for b, p in v_index],
                "columns": ["dc_a", "dc_b", "dc_c"],
                "pu_per_kw": H.tolist() if H is not None else None,
            }
        )
    )

    # Hand-computed metrics (GRID.md "Metrics") over the monitored bus-phases.
    vmin_b, vmax_b = ofo_cfg.v_min, ofo_cfg.v_max
    dt_med = float(np.median(np.diff(gtimes)))
    per_snap = np.nansum(np.maximum(vmin_b - V, 0.0) + np.maximum(V - vmax_b, 0.0), axis=1)
    n_under = int(np.count_nonzero(np.nanmin(V, axis=1) < vmin_b))
    n_over = int(np.count_nonzero(np.nanmax(V, axis=1) > vmax_b))
    dc_dt_f = float(dc_dt)
    batch_arr = {lab: np.array([s.batch_size_by_model[lab] for s in ds], dtype=float) for lab in labels}
    mean_batch = {lab: float(np.sum(b * dc_dt_f) / (len(b) * dc_dt_f)) for lab, b in batch_arr.items()}
    changes = {lab: int(np.count_nonzero(np.diff(b))) for lab, b in batch_arr.items()}
    first_cmd = next((c for c in log.commands if isinstance(c, SetBatchSize)), None)
    ptot = np.array([s.power_w.a + s.power_w.b + s.power_w.c for s in ds]) / 1e3
    hand = {
        "violation_integral_pu_s": float(per_snap.sum() * dt_med),
        "violation_time_s": float(np.count_nonzero(per_snap > 0) * dt_med),
        "undervoltage_time_s": n_under * dt_med,
        "overvoltage_time_s": n_over * dt_med,
        "worst_vmin_pu": float(np.nanmin(V)),
        "worst_vmax_pu": float(np.nanmax(V)),
    }
    vs = compute_allbus_voltage_stats(gs, v_min=vmin_b, v_max=vmax_b, exclude_buses=excl)
    peer_v = {
        "violation_integral_pu_s": vs.integral_violation_pu_s,
        "violation_time_s": vs.violation_time_s,
        "worst_vmin_pu": vs.worst_vmin,
        "worst_vmax_pu": vs.worst_vmax,
    }
    try:
        ps = compute_performance_stats(ds, itl_deadline_s_by_model={s.model_label: s.itl_deadline_s for s in specs})
        peer_perf = {
            "mean_batch_by_model": ps.mean_batch_by_model,
            "mean_itl_s_by_model": ps.mean_itl_s_by_model,
            "itl_deadline_fraction_by_model": ps.itl_deadline_fraction_by_model,
            "mean_throughput_tps": ps.mean_throughput_tps,
            "mean_replicas_by_model": ps.mean_replicas_by_model,
        }
    except Exception as e:  # the peer raises KeyError when a model never has a finite ITL
        peer_perf = {"error": repr(e)}
    taps_seen = sorted({tuple(sorted(g.tap_positions.regulators.items())) for g in gs if g.tap_positions})
    metrics = {
        "scenario": str(sc_path),
        "openg2g": openg2g.__version__,
        "duration_s": duration,
        "grid_steps": len(gs),
        "dc_steps": len(ds),
        "monitored_bus_phases": len(v_index),
        "median_grid_dt_s": dt_med,
        "hand": hand,
        "peer_metrics_voltage": peer_v,
        "peer_metrics_performance": peer_perf,
        "mean_batch_by_model": mean_batch,
        "batch_changes_by_model": changes,
        "batch_min_max_by_model": {lab: [int(b.min()), int(b.max())] for lab, b in batch_arr.items()},
        "final_batch_by_model": {lab: int(b[-1]) for lab, b in batch_arr.items()},
        "ofo_first_command": dict(first_cmd.batch_size_by_model) if first_cmd else None,
        "ofo_init": args.ofo_init,
        "replicas_by_model": replicas,
        "active_replicas_by_model_first_step": dict(ds[0].active_replicas_by_model),
        "facility_kw_mean_min_max": [float(ptot.mean()), float(ptot.min()), float(ptot.max())],
        "dc_bus_v_first": {PHASE[p]: float(V[0, j]) for j, (b, p) in enumerate(v_index) if b.lower() == str(buses[d['name']]).lower()},
        "taps_seen": [dict(t) for t in taps_seen],
        "h_dc_bus_pu_per_kw": (
            {PHASE[p]: H[j].tolist() for j, (b, p) in enumerate(v_index) if b.lower() == str(buses[d['name']]).lower()}
            if H is not None
            else None
        ),
        "import_s": IMPORT_S,
        "setup_s": setup_s,
        "start_s": start_s,
        "loop_s": loop_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "grid_steps_per_s": len(gs) / loop_s,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'grid.parquet'} ({len(gs)} rows x {len(cols)} cols), {out / 'metrics.json'}")
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
