"""Tests of the Python package: known answers, real data from ../shared when it is there."""

import json
import math
import os
from pathlib import Path

import pytest

import powersynth as ps

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def shared(sub):
    p = SHARED / sub
    if not p.exists():
        if os.environ.get("CI"):
            raise AssertionError(f"{p} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{p} not here")
    return p


def first_run(group):
    return next(p.parent for p in sorted((shared("measured") / group).rglob("manifest.json")))


def test_logistic_fit_matches_the_peer_test_vector():
    # The peer's LogisticModel.fit on these points: L 350.57, x0 6.3846, k 1.0812, b0 292.91
    # (grid only); ours refines it, so its squared error is no larger.
    x = [math.log2(b) for b in [8, 16, 32, 64, 128, 256, 512, 1024]]
    y = [300, 320, 360, 430, 520, 590, 625, 640]
    m = ps.LogisticModel.fit(x, y)
    peer = ps.LogisticModel(350.5706248480498, 6.384615384615385, 1.0811807510766078, 292.9098060387019)
    sse = lambda f: sum((f.eval_x(a) - b) ** 2 for a, b in zip(x, y))
    assert sse(m) <= sse(peer) + 1e-9
    assert abs(peer.eval(128) - 524.4474607290101) < 1e-9
    assert abs(peer.deriv_wrt_x(7) - 84.9985824079803) < 1e-9
    assert set(m.to_dict()) == {"L", "x0", "k", "b0"}
    with pytest.raises(ps.PowersynthError, match="differ in length"):
        ps.LogisticModel.fit([1.0, 2.0], [1.0])


def test_itl_mixture_compatible_mode_matches_the_peer():
    samples = [0.010 + 0.0001 * i for i in range(1000)] + [0.05 + 0.001 * j for j in range(100)]
    m = ps.ITLMixtureModel.fit(samples, mode="compatible")
    d = m.to_dict()
    assert abs(d["pi_steady"] - 0.3665966101465392) < 1e-9
    assert abs(d["scale_stall"] - 0.06528636391333965) < 1e-9
    mean, var = m.mean_var()
    assert abs(mean - 0.06536510968793859) < 1e-12
    rng = ps.Rng(0)
    assert math.isnan(m.sample_avg(0, rng))
    # The CLT branch: 10 000 replicas average close to the mixture's mean.
    assert abs(m.sample_avg(10_000, rng) - mean) < 5 * math.sqrt(var / 10_000)
    with pytest.raises(ps.PowersynthError, match="mode"):
        ps.ITLMixtureModel.fit(samples, mode="fast")


def test_leaderboard_loads_as_a_table_from_json_or_embedded_fits():
    fits = ps.load_leaderboard(ROOT / "data" / "default" / "fits.json")
    assert fits.num_rows == 835
    df = fits.to_pandas()
    assert {"model_id", "gpu_model", "avg_power_w", "median_itl_s"} <= set(df.columns)
    lb = ps.load_leaderboard(shared("mlenergy-leaderboard"))
    assert lb.num_rows == 838
    q = lb.to_pandas().query("model_id == 'Qwen/Qwen3-8B' and gpu_model == 'H100' and task == 'lm-arena-chat'")
    assert q["avg_power_w"].between(400, 700).all() and len(q) == 10
    with pytest.raises(ps.PowersynthError, match="no leaderboard"):
        ps.load_leaderboard(ROOT / "python")


def test_synthesize_learns_and_transfers():
    train = first_run("arrival_rate_qwen3-8b_a100_r2p5")
    target = first_run("arrival_pattern_qwen3-8b_a100_smooth")
    manifest = json.loads((target / "manifest.json").read_text())
    serving = {
        "model": manifest["model"],
        "hardware": manifest["hardware"],
        "tp": manifest["tp"],
        "max_num_seqs": manifest["server"]["max_num_seqs"],
        "max_num_batched_tokens": manifest["server"]["max_num_batched_tokens"],
        "enable_chunked_prefill": True,
        "enable_prefix_caching": False,
    }
    requests = target / "requests_summary.json"
    t0 = json.loads(requests.read_text())["request_timestamps"][0]
    t = ps.synthesize(serving, requests, t0, 60.0, train=[train], seed=3)
    assert t.column_names == ["t_s", "time_unix_s", "power_w"] and t.num_rows == 240
    assert t.column("t_s")[0].as_py() == 0.0 and t.column("time_unix_s")[0].as_py() == t0
    again = ps.synthesize(serving, requests, t0, 60.0, train=[train], seed=3)
    assert t.equals(again)
    p = t.column("power_w").to_pylist()
    assert 60 < min(p) and max(p) < 700
    assert ps.synthesis_info(t)["transfer"] is None
    # The same traffic on an H100 nobody measured: transferred, levels of the H100.
    h100 = dict(serving, hardware="H100")
    with pytest.raises(ps.PowersynthError, match="leaderboard"):
        ps.synthesize(h100, requests, t0, 60.0, train=[train])
    th = ps.synthesize(h100, requests, t0, 60.0, train=[train], leaderboard=shared("mlenergy-leaderboard"))
    info = ps.synthesis_info(th)
    assert info["transfer"]["reference"]["configuration"] == "Qwen/Qwen3-8B × A100 × TP1"
    assert th.to_pandas()["power_w"].mean() > t.to_pandas()["power_w"].mean()


def test_run_scenario_returns_a_table_per_datacenter(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        """
duration_s = 10
[datacenter]
name = "dc"
dt_s = "1/4"
total_gpu_capacity = 16
[[models]]
label = "m"
gpus_per_replica = 1
initial_batch_size = 8
replicas = 8
power = { kind = "parametric", batch_sizes = [8], level_w = [300.0, 300.0], trace_s = 10.0, trace_dt_s = 0.25 }
"""
    )
    tables = ps.run_scenario(scenario)
    t = tables["dc"]
    assert t.num_rows == 40
    assert "m__power_w" in t.column_names
    assert set(t.column("m__power_w").to_pylist()) == {8 * 300.0}
    with pytest.raises(ps.PowersynthError):
        ps.run_scenario(tmp_path / "missing.toml")


def test_the_readme_example_runs(monkeypatch):
    import re

    shared("measured")
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(ROOT)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["trace"].num_rows == 240
    assert ps.synthesis_info(ns["trace"])["transfer"]["mode"] == "direct"
    assert all(t.num_rows > 0 for t in ns["tables"].values())


FEEDERS = SHARED / "feeders"
GOLDEN = ROOT / "tests" / "fixtures" / "grid" / "ieee13.json"


@pytest.mark.skipif(not FEEDERS.is_dir(), reason="../shared/data/feeders not present")
def test_power_flow_matches_opendss_golden_case():
    case = next(c for c in json.loads(GOLDEN.read_text())["cases"] if c["name"] == "grid_start_kw500")
    out = ps.power_flow(
        FEEDERS / "ieee13" / "IEEE13Bus.dss",
        loads={"671": 500.0},
        taps=case["taps"],
        source_pu=1.0,
    )
    assert out["converged"]
    assert set(out["nodes"]) == set(case["nodes"])
    worst = max(abs(out["nodes"][k] - v) for k, v in case["nodes"].items())
    assert worst < 1e-4
    with pytest.raises(ps.PowersynthError, match="unknown bus"):
        ps.power_flow(FEEDERS / "ieee13" / "IEEE13Bus.dss", loads={"nowhere": 1.0})
