"""Every output folder the commands write reads cleanly in DuckDB (one schema per folder), and
the cluster files run: the Slurm array script is driven locally as Slurm would (four array
tasks, then the merge job) and the Kubernetes manifest parses as the Indexed Job it claims.

The binaries come from POWERSYNTH_BIN (default: target/debug of this checkout, built by
`cargo test` before `.ci/run` calls this); the measured data from ../shared beside it.
"""

import json
import os
import subprocess
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("POWERSYNTH_BIN", ROOT / "target" / "debug"))
MEASURED = ROOT.parent / "shared" / "data" / "measured"
SCENARIO = ROOT / "benches" / "scenarios" / "facility-racks.toml"


def need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (CI builds it before the Python tests)")
        pytest.skip(f"{path} is missing: run `cargo build --bins` or set POWERSYNTH_BIN")
    return path


def run(*args, env=None):
    p = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert p.returncode == 0, f"{args}: {p.stderr[-3000:]}"
    return p.stdout


def parquet_folders(root: Path):
    """Folders that directly hold parquet files."""
    return sorted({p.parent for p in root.rglob("*.parquet")})


def assert_one_schema_per_folder(root: Path) -> int:
    folders = parquet_folders(root)
    assert folders, f"no parquet under {root}"
    for d in folders:
        schemas = {str(pq.read_schema(f)) for f in d.glob("*.parquet")}
        assert len(schemas) == 1, f"{d} holds {len(schemas)} schemas"
        rows = duckdb.sql(f"SELECT count(*) FROM '{d}/*.parquet'").fetchall()[0][0]
        files = sum(pq.read_metadata(f).num_rows for f in d.glob("*.parquet"))
        assert rows == files, d
    return len(folders)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    need(BIN / "simulate")
    runs = sorted(p for p in MEASURED.glob("*_qwen3-8b_a100*/*") if p.is_dir())
    if len(runs) < 2:
        pytest.skip("the measured Qwen3-8B A100 runs in ../shared are needed")
    tmp = tmp_path_factory.mktemp("outputs")
    out = {}
    out["simulate"] = tmp / "simulate"
    run(BIN / "simulate", "--scenario", SCENARIO, "--duration-s", "180", "--out", out["simulate"])
    smooth = next(r for r in runs if "smooth" in str(r))
    target = next(r for r in runs if r.parent.name == "arrival_rate_qwen3-8b_a100_r2p5")
    t0 = json.loads((target / "manifest.json").read_text())["clock"]["reference_epoch_s"]
    out["validate"] = tmp / "validate"
    run(BIN / "validate", "--train", smooth, "--target", target, "--out", out["validate"])
    out["synthesize"] = tmp / "synthesize"
    run(
        BIN / "synthesize", "--train", smooth, "--serving", target / "manifest.json",
        "--requests", target / "requests_summary.json", "--t0", t0, "--duration-s", "120",
        "--out", out["synthesize"] / "trace.parquet",
    )
    out["build-dataset"] = tmp / "dataset"
    run(
        BIN / "build-dataset", "--quiet", "--pipeline", "pipelines/leaderboard.toml",
        "--out", out["build-dataset"],
    )
    return out


def test_every_output_folder_has_one_schema_and_reads_in_duckdb(outputs):
    for name, root in outputs.items():
        n = assert_one_schema_per_folder(root)
        print(f"{name}: {n} parquet folders")
    sim = outputs["simulate"]
    # Long tables: a model is a value, not a column name, and power sums to the facility's IT.
    models = duckdb.sql(
        f"SELECT DISTINCT model FROM '{sim}/models/*.parquet' ORDER BY model"
    ).fetchall()
    assert models == [("chat",), ("reasoning",)]
    # The validate power series: every run in one query, times since the run's start.
    v = duckdb.sql(
        f"SELECT run_id, min(t_s), count(*) FROM '{outputs['validate']}/power/*.parquet' "
        "GROUP BY run_id"
    ).fetchall()
    assert len(v) == 1 and v[0][1] == 0.0 and v[0][2] > 100
    # Measured trace series are self-describing (model and batch in the rows).
    t = duckdb.sql(
        f"SELECT count(DISTINCT model_label) FROM "
        f"'{outputs['build-dataset']}/measured/traces/series/*.parquet'"
    ).fetchall()[0][0]
    assert t >= 2


def slurm_env(i, n):
    env = dict(os.environ)
    env.update(
        SLURM_ARRAY_TASK_ID=str(i),
        SLURM_ARRAY_TASK_COUNT=str(n),
        SLURM_ARRAY_TASK_MIN="0",
        POWERSYNTH_BIN=str(BIN),
    )
    return env


def test_slurm_array_script_runs_shards_and_merge(tmp_path):
    need(BIN / "merge-shards")
    script = ROOT / "deploy" / "slurm-array.sh"
    run("bash", "-n", script)
    out = tmp_path / "run"
    # Four array tasks, as Slurm would start them, then the dependent merge job.
    procs = [
        subprocess.Popen(
            ["bash", str(script), str(SCENARIO), str(out)],
            env=slurm_env(i, 4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err.decode()[-2000:]
    env = slurm_env(0, 4)
    env["MERGE"] = "1"
    run("bash", script, SCENARIO, out, env=env)
    whole = tmp_path / "whole"
    run(BIN / "simulate", "--scenario", SCENARIO, "--out", whole)
    # The shards, read as one hive-partitioned table, sum to the facility; so does the merge.
    q = (
        "SELECT tick, sum(facility_power_w) AS w FROM read_parquet('{}', hive_partitioning = true) "
        "GROUP BY tick ORDER BY tick"
    )
    shards = duckdb.sql(q.format(f"{out}/shards/steps/*/*.parquet")).fetchall()
    merged = duckdb.sql(q.format(f"{out}/merged/steps/*.parquet")).fetchall()
    unsplit = duckdb.sql(q.format(f"{whole}/steps/*.parquet")).fetchall()
    assert len(shards) == len(merged) == len(unsplit) == 6000
    for (k, a), (_, b), (_, c) in zip(shards, merged, unsplit):
        assert abs(a - c) <= 1e-9 * c and abs(b - c) <= 1e-9 * c, k
    parts = duckdb.sql(
        f"SELECT DISTINCT shard FROM read_parquet('{out}/shards/models/*/*.parquet', "
        "hive_partitioning = true) ORDER BY shard"
    ).fetchall()
    assert [p[0] for p in parts] == [0, 1, 2, 3]
    m = json.loads((out / "merged" / "facility_metrics.json").read_text())
    w = json.loads((whole / "facility_metrics.json").read_text())
    assert abs(m[0]["mean_facility_power_w"] - w[0]["mean_facility_power_w"]) < 1e-6


def test_kubernetes_manifest_is_an_indexed_job_and_a_merge():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s-indexed-job.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Job", "Job"]
    shards, merge = docs
    spec = shards["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    n = next(e["value"] for e in container["env"] if e["name"] == "SHARDS")
    assert int(n) == spec["completions"] == spec["parallelism"]
    args = " ".join(container["args"])
    assert "--shard \"${JOB_COMPLETION_INDEX}/${SHARDS}\"" in args and "--out /data/run/shards" in args
    m = merge["spec"]["template"]["spec"]
    assert m["containers"][0]["command"][:2] == ["merge-shards", "/data/run/shards"]
    wait = m["initContainers"][0]
    assert next(e["value"] for e in wait["env"] if e["name"] == "SHARDS") == n


def test_slurm_array_script_runs_a_sharded_pipeline(tmp_path):
    need(BIN / "build-dataset")
    script = ROOT / "deploy" / "slurm-array.sh"
    pipeline = ROOT / "pipelines" / "default.toml"
    whole = tmp_path / "whole"
    run(BIN / "build-dataset", "-q", "--pipeline", pipeline, "--out", whole)
    out = tmp_path / "split"
    for i in range(3):
        env = slurm_env(i, 3)
        env["KIND"] = "build-dataset"
        run("bash", script, pipeline, out, env=env)
    env["MERGE"] = "1"
    run("bash", script, pipeline, out, env=env)
    for f in ["fits/logistic_fits/part-0.parquet", "fits/itl_mixtures/part-0.parquet",
              "fits/default_fits.json"]:
        assert (whole / f).read_bytes() == (out / f).read_bytes(), f
    assert not (out / "shards").exists()
