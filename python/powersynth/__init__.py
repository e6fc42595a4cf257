"""powersynth: GPU power traces of LLM inference from public and measured benchmarks.

The Rust library for notebooks (PyO3). Tables come back as ``pyarrow.Table`` through the
Arrow C data interface (``table.to_pandas()``, ``polars.from_arrow(table)``); errors raise
``PowersynthError`` with the library's message (file, row and value where it applies).

Names follow OpenG2G / mlenergy-data where the same thing exists: ``LogisticModel.fit`` /
``.eval``, ``ITLMixtureModel.fit`` / ``.sample_avg``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import pyarrow as pa

from ._powersynth import (
    ITLMixtureModel,
    LogisticModel,
    PowersynthError,
    Rng,
    load_leaderboard as _load_leaderboard,
    power_flow as _power_flow,
    run_scenario as _run_scenario,
    synthesize as _synthesize,
)

__all__ = [
    "ITLMixtureModel",
    "LogisticModel",
    "PowersynthError",
    "Rng",
    "load_leaderboard",
    "power_flow",
    "run_scenario",
    "synthesize",
]

PathLike = Union[str, Path]


def load_leaderboard(path: PathLike) -> pa.Table:
    """ML.ENERGY leaderboard configurations, one row each.

    ``path``: a leaderboard folder (``<task>.json`` files), a ``build-dataset`` output folder,
    or its ``fits/default_fits.json`` (points read off the fitted logistic curves).
    Columns: task, model_id, gpu_model, num_gpus, max_num_seqs, avg_batch_size, avg_power_w,
    median_itl_s, p90_itl_s, p95_itl_s, p99_itl_s, output_throughput_tps, architecture,
    active_params_b.
    """
    return _load_leaderboard(str(path))


def synthesize(
    serving: Mapping[str, object],
    requests: PathLike,
    t0: float,
    duration_s: float,
    *,
    dt_s: float = 0.25,
    seed: int = 0,
    train: Optional[Iterable[PathLike]] = None,
    model: Optional[PathLike] = None,
    leaderboard: Optional[PathLike] = None,
    stand_in: Optional[Mapping[str, str]] = None,
    task: Optional[str] = None,
) -> pa.Table:
    """Power of one serving replica for a request log: a table ``t_s`` (s since ``t0``),
    ``time_unix_s`` and ``power_w`` (W, total over the replica's GPUs).

    ``serving``: model, hardware, tp, max_num_seqs, max_num_batched_tokens,
    enable_chunked_prefill, enable_prefix_caching. ``requests``: a request log (docs/requests.md).
    The model is learned from ``train`` (measured run folders) or read from ``model`` (a
    learned model JSON). When ``serving`` names a configuration no training run has, give
    ``leaderboard`` (and ``stand_in`` for models it lacks): the model is transferred from the
    best reference (docs/transfer.md). The schema metadata key ``powersynth`` holds JSON with
    the configuration, training runs and the transfer report.
    """
    table, info = _synthesize(
        dict(serving),
        str(requests),
        float(t0),
        float(duration_s),
        dt_s=float(dt_s),
        seed=int(seed),
        train=None if train is None else [str(p) for p in train],
        model=None if model is None else str(model),
        leaderboard=None if leaderboard is None else str(leaderboard),
        stand_in=None if stand_in is None else dict(stand_in),
        task=task,
    )
    return table.replace_schema_metadata({"powersynth": info})


def synthesis_info(table: pa.Table) -> dict:
    """The JSON a ``synthesize`` table carries (configuration, training runs, transfer)."""
    meta = table.schema.metadata or {}
    return json.loads(meta.get(b"powersynth", b"{}"))


def run_scenario(
    path: PathLike,
    *,
    gpus: Optional[int] = None,
    duration_s: Optional[float] = None,
    seed: Optional[int] = None,
) -> Dict[str, pa.Table]:
    """Runs a scenario TOML (docs/coordinator.md); one table per datacenter, keyed by its name.

    Columns: t_s, power_a_w, power_b_w, power_c_w, facility_power_w, training_power_w, and per
    model ``<label>__power_w``, ``<label>__active_replicas``, ``<label>__batch_size``.
    ``gpus``, ``duration_s`` and ``seed`` override the file's.
    """
    return dict(_run_scenario(str(path), gpus=gpus, duration_s=duration_s, seed=seed))


__all__.append("synthesis_info")


def power_flow(
    feeder: PathLike,
    *,
    loads: Optional[Mapping[str, float]] = None,
    taps: Optional[Mapping[str, int]] = None,
    source_pu: Optional[float] = None,
    pf: float = 0.95,
    tolerance_pu: float = 1e-6,
) -> Dict[str, object]:
    """One unbalanced three-phase power flow on an OpenDSS feeder (docs/grid.md).

    ``loads``: bus → kW per phase; each bus gets one single-phase wye constant-PQ load per
    phase (kV = the bus's line-to-neutral base) at power factor ``pf``. ``taps``: RegControl
    name → tap steps of 0.00625 from 1.0 (others keep what the script's own ``Solve`` chose).
    Returns ``{"converged": bool, "iterations": int, "nodes": {"bus.phase": v_pu}}`` with every
    node, names lowercase as OpenDSS writes them. Raises ``PowersynthError`` on a malformed
    feeder (file, line, token), an unknown bus or regulator, or a solve that does not converge.
    """
    return _power_flow(
        str(feeder),
        dict(loads) if loads is not None else None,
        dict(taps) if taps is not None else None,
        source_pu,
        pf,
        tolerance_pu,
    )
