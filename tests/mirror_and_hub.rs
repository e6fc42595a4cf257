//! The ML.ENERGY loaders on a mirror the test builds itself (a parquet runs table and a few
//! `results.json`), the same files through the Hub code path (a pre-filled hub cache), and the
//! Hub's error paths (offline, gated) against a loopback server.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use powersynth::pipeline::{self, PipelineConfig, RunOptions, SourceConfig};
use powersynth::sources::mlenergy::{BenchmarkRuns, HubOptions, PowerMetric, RUNS_TABLE};
use powersynth::spec::InferenceModelSpec;
use powersynth::table::{write_parquet, Column, Table};

/// Two devices: device "0" on a 0.1 s grid, device "1" offset by 0.05 s; steady state 2…8 s.
fn results_json(power0: f64, itl: &str) -> String {
    let d0: Vec<String> = (0..100)
        .map(|i| format!("[{}, {}]", 1000.0 + i as f64 * 0.1, power0 + i as f64))
        .collect();
    let d1: Vec<String> = (0..100)
        .map(|i| format!("[{}, {}]", 1000.05 + i as f64 * 0.1, 100.0))
        .collect();
    format!(
        r#"{{"results": [{{"success": true, "itl": {itl}, "output_len": 5}}, {{"success": false, "itl": [9.0]}}],
           "timeline": {{"steady_state_start_time": 1002.0, "steady_state_end_time": 1008.0,
             "power": {{"device_instant": {{"1": [{}], "0": [{}]}}}}}}}}"#,
        d1.join(","),
        d0.join(",")
    )
}

fn build_mirror(root: &Path) {
    let rows = [
        (8u32, "a8", 300.0),
        (16, "a16", 400.0),
        (32, "a32", 500.0),
        (16, "b16", 420.0),
    ];
    let mut paths = Vec::new();
    for (b, name, p) in rows {
        let rel = format!("llm/h100/current/run/llm/lm-arena-chat/results/org/m/H100/num_gpus+2+max_num_seqs+{b}+{name}/results.json");
        let f = root.join(&rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(
            &f,
            results_json(p, "[0.0, 0.03, 0.0, 0.0, 0.01, -1.0, 0.02]"),
        )
        .unwrap();
        paths.push(rel);
    }
    let n = rows.len();
    let s = |v: &str| Column::Str(vec![v.to_string(); n]);
    write_parquet(
        &root.join(RUNS_TABLE),
        &Table::new()
            .with("task", s("lm-arena-chat"))
            .with("model_id", s("org/m"))
            .with("nickname", s("M"))
            .with("gpu_model", s("H100"))
            .with("num_gpus", Column::I64(vec![2; n]))
            .with(
                "max_num_seqs",
                Column::I64(rows.iter().map(|r| r.0 as i64).collect()),
            )
            .with(
                "avg_power_watts",
                Column::F64(rows.iter().map(|r| r.2 * 2.0).collect()),
            )
            .with(
                "median_itl_ms",
                Column::F64(rows.iter().map(|r| 10.0 + r.0 as f64 / 8.0).collect()),
            )
            .with("mean_itl_ms", Column::F64(vec![12.0; n]))
            .with(
                "output_throughput_tokens_per_sec",
                Column::F64(rows.iter().map(|r| 50.0 * r.0 as f64).collect()),
            )
            .with("is_stable", Column::Bool(vec![true, true, false, true]))
            .with("results_path", Column::Str(paths)),
    )
    .unwrap();
}

fn spec(batches: Vec<u32>) -> InferenceModelSpec {
    InferenceModelSpec::builder("m", "org/m", "H100", "lm-arena-chat")
        .gpus_per_replica(2)
        .batch_sizes(batches)
        .build()
        .unwrap()
}

#[test]
fn mirror_loads_selects_and_aligns() {
    let dir = tempfile::tempdir().unwrap();
    build_mirror(dir.path());
    let runs = BenchmarkRuns::from_directory(dir.path()).unwrap();
    assert_eq!(runs.records.len(), 4);
    assert_eq!(runs.select(&spec(vec![8, 16, 32]), false).unwrap().len(), 4);
    assert_eq!(runs.select(&spec(vec![8, 16, 32]), true).unwrap().len(), 3);
    let e = runs.select(&spec(vec![64]), false).unwrap_err().to_string();
    assert!(
        e.contains("no runs match") && e.contains("batch_sizes=[64]"),
        "{e}"
    );
    let mut other = spec(vec![8]);
    other.task = "gpqa".into();
    assert!(
        runs.select(&other, false).is_err(),
        "task is filtered per spec"
    );

    let r = runs.results(&runs.records[0]).unwrap();
    let tl = r.power_timeline(PowerMetric::DeviceInstant).unwrap();
    // Steady window [1002, 1008] inclusive on device 0's axis: 61 samples (float rounding may
    // drop an end point), relative to the window start.
    assert!(
        (60..=61).contains(&tl.relative_time_s.len()),
        "{}",
        tl.relative_time_s.len()
    );
    assert!(tl.relative_time_s[0].abs() < 1e-6 || (tl.relative_time_s[0] - 0.1).abs() < 1e-6);
    let i = tl.relative_time_s.len() / 2;
    // Device 1's readings are offset by 0.05 s: it still contributes its 100 W (the peer adds 0).
    let device0 = 300.0 + ((1002.0 + tl.relative_time_s[i] - 1000.0) / 0.1).round();
    assert!(
        (tl.power_w[i] - (device0 + 100.0)).abs() < 1e-6,
        "{} vs {}",
        tl.power_w[i],
        device0 + 100.0
    );
    assert_eq!(tl.devices, 2);
    // ITL: [0, .03, 0, 0, .01, -1, .02] → .01 ×3, .01, .02; the failed request is ignored.
    let itl = r.itl_samples().unwrap();
    assert_eq!(itl.len(), 5);
    assert!(itl.iter().take(4).all(|v| (v - 0.01).abs() < 1e-12) && (itl[4] - 0.02).abs() < 1e-12);
    assert_eq!(r.output_lengths(), vec![5]);
}

#[test]
fn results_json_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        powersynth::sources::mlenergy::RunResults::read(&p)
    };
    let e = write("trunc.json", &results_json(1.0, "[0.01]")[..200])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trunc.json") && e.contains("invalid JSON"),
        "{e}"
    );
    let r = write(
        "zeros.json",
        r#"{"results": [{"success": true, "itl": [0.0, 0.0]}]}"#,
    )
    .unwrap();
    let e = r.itl_samples().unwrap_err().to_string();
    assert!(
        e.contains("zeros.json") && e.contains("no valid ITL"),
        "{e}"
    );
    let e = r
        .power_timeline(PowerMetric::DeviceInstant)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no \"timeline\""), "{e}");
    let r = write("window.json", r#"{"timeline": {"steady_state_start_time": 5, "steady_state_end_time": 6, "power": {"device_instant": {"0": [[1, 100], [2, 100]]}}}}"#).unwrap();
    let e = r
        .power_timeline(PowerMetric::DeviceInstant)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no sample in the steady state"), "{e}");
    let r = write("order.json", r#"{"timeline": {"steady_state_start_time": 0, "steady_state_end_time": 6, "power": {"device_instant": {"0": [[2, 100], [2, 100]]}}}}"#).unwrap();
    let e = r
        .power_timeline(PowerMetric::DeviceInstant)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 1") && e.contains("does not increase"),
        "{e}"
    );
}

#[test]
fn mirror_pipeline_fits_traces_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    build_mirror(dir.path());
    let out = tempfile::tempdir().unwrap();
    let cfg: PipelineConfig = toml::from_str(&format!(
        "name = \"mirror-test\"\n[source]\nkind = \"mirror\"\npath = {:?}\n[templates]\nduration_s = 20.0\ndt_s = 0.5\n",
        dir.path()
    ))
    .unwrap();
    assert!(matches!(cfg.source, SourceConfig::Mirror { .. }));
    let s = pipeline::run(
        &cfg,
        &RunOptions {
            out_dir: out.path().into(),
            force: false,
            source_path: None,
            measured_path: None,
            pipeline_file: None,
            progress: &common::Quiet,
            shard: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(s.groups, 1);
    // Specs derived from the runs table split a replica's GPUs by tensor parallelism.
    let mut derived = spec(vec![8, 16, 32]);
    derived.tensor_parallel = 2;
    let hash = derived.cache_hash();
    for f in [
        "logistic_fit.json",
        "itl_fit.json",
        "_manifest.json",
        "traces/manifest.parquet",
    ] {
        assert!(
            out.path().join("specs").join(&hash).join(f).is_file(),
            "{f}"
        );
    }
    let t = powersynth::table::ParquetTable::read(&out.path().join("templates/templates.parquet"))
        .unwrap();
    assert_eq!(
        t.num_rows(),
        3 * 41,
        "3 batch sizes × (20 / 0.5 + 1) samples"
    );
    // Per-GPU template of batch 8 at t = 0: (device0 300+20 + device1 100) / 2 GPUs = 210 W.
    let p = t.floats("power_w_per_gpu").unwrap();
    assert!((p[0] - 210.0).abs() < 1.0, "{}", p[0]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap().len(), 64);

    // A scenario replaying this store: only `feasible_batch_sizes` get templates, so a batch
    // outside them is refused (it was silently allowed).
    let scenario = |feasible: &str, initial: u32| {
        format!(
            "duration_s = 10\n[datacenter]\ndt_s = \"1/2\"\ntotal_gpu_capacity = 16\n\
             [[models]]\nlabel = \"m\"\ngpus_per_replica = 2\ninitial_batch_size = {initial}\n\
             replicas = 4\npower = {{ kind = \"spec-store\", dir = {dir:?}, spec = {{ \
             model_label = \"m\", model_id = \"org/m\", gpu_model = \"H100\", \
             task = \"lm-arena-chat\", gpus_per_replica = 2, tensor_parallel = 2, \
             batch_sizes = [8, 16, 32]{feasible} }} }}\nitl = {{ kind = \"spec-store\" }}\n",
            dir = out.path().join("specs"),
        )
    };
    let build = |text: String| {
        let sc: powersynth::scenario::Scenario = toml::from_str(&text).unwrap();
        powersynth::scenario::build(&sc, out.path(), &Default::default()).map(|_| ())
    };
    build(scenario("", 32)).unwrap();
    build(scenario(", feasible_batch_sizes = [8, 16]", 16)).unwrap();
    let e = build(scenario(", feasible_batch_sizes = [8, 16]", 32))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch size 32 has no power template (have [8, 16])"),
        "{e}"
    );
}

/// A hub cache laid out as huggingface_hub does: refs/main → snapshots/<commit>/…
fn fill_hub_cache(cache: &Path, mirror: &Path) {
    let repo = cache.join("datasets--ml-energy--benchmark-v3");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    fn copy(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let t = to.join(p.file_name().unwrap());
            if p.is_dir() {
                std::fs::create_dir_all(&t).unwrap();
                copy(&p, &t);
            } else {
                std::fs::copy(&p, &t).unwrap();
            }
        }
    }
    std::fs::create_dir_all(&snap).unwrap();
    copy(mirror, &snap);
}

#[test]
fn hub_code_path_reads_the_cache_and_explains_errors() {
    let mirror = tempfile::tempdir().unwrap();
    build_mirror(mirror.path());
    let cache = tempfile::tempdir().unwrap();
    fill_hub_cache(cache.path(), mirror.path());
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
        ..HubOptions::new("ml-energy/benchmark-v3")
    };
    let runs = BenchmarkRuns::from_hub(opts.clone()).unwrap();
    let from_mirror = BenchmarkRuns::from_directory(mirror.path()).unwrap();
    // Debug text, because the records hold NaN for columns the table lacks (NaN ≠ NaN).
    assert_eq!(
        format!("{:?}", runs.records),
        format!("{:?}", from_mirror.records),
        "hub and mirror load identically"
    );
    let r = runs.results(&runs.records[1]).unwrap();
    assert_eq!(
        r.itl_samples().unwrap(),
        from_mirror
            .results(&from_mirror.records[1])
            .unwrap()
            .itl_samples()
            .unwrap()
    );

    // Offline and not cached.
    let empty = tempfile::tempdir().unwrap();
    let e = BenchmarkRuns::from_hub(HubOptions {
        cache_dir: Some(empty.path().into()),
        ..opts.clone()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE") && e.contains("runs/llm.parquet"),
        "{e}"
    );

    // Gated: a loopback server that answers 401 to everything.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..6 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            if String::from_utf8_lossy(&buf).contains("X-Stop") {
                return;
            }
        }
    });
    let e = BenchmarkRuns::from_hub(HubOptions {
        cache_dir: Some(empty.path().into()),
        offline: false,
        endpoint: Some(format!("http://{addr}")),
        token: None,
        ..opts
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("401") && e.contains("request access") && e.contains("HF_TOKEN"),
        "{e}"
    );
    drop(server);
}
