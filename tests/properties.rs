//! Property tests of the parsers and config readers (proptest, deterministic RNG: the same
//! cases on every run): random and edge values (0, negatives, NaN, infinities, 1e308, tiny
//! steps) never panic and never allocate without bound; they load or fail with an error.

use std::path::Path;

use powersynth::scenario::{build, Overrides, Scenario};
use powersynth::sources::measured::{load_run, read_request_log};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

mod common;

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Numbers as a user or a corrupted file might give them.
fn edge_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1e-12".to_string()),
        Just("0.123456789".to_string()),
        Just("1e12".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        (1u32..2000).prop_map(|v| v.to_string()),
        (0.0f64..1.0).prop_map(|v| format!("{v}")),
    ]
}

const SCENARIO: &str = r#"duration_s = {duration}
[datacenter]
dt_s = {dt}
gpus_per_server = {gps}
total_gpu_capacity = {capacity}
base_kw_per_phase = {base}
amplitude_scale_range = [{amp_lo}, {amp_hi}]
noise_fraction = {noise}
pue = {pue}
servers_per_rack = {spr}
racks_per_row = 2
[[models]]
label = "A"
gpus_per_replica = 1
initial_batch_size = 8
replicas = {replicas}
power = { kind = "parametric", batch_sizes = [8, 16], level_w = [{level}, 500], ripples = [[{ripple}, 2.0]], noise_sd_w = {noise_sd}, clip_w = [{clip_lo}, {clip_hi}], trace_s = {trace_s}, trace_dt_s = {trace_dt} }
itl = { kind = "parametric", loc_s = 0.002, pi_steady = {pi}, sigma_steady = {sigma}, sigma_stall = 0.5, scale_s = 0.012, per_log2_batch = 0.1, stall_factor = 3 }
[[controllers]]
kind = "noop"
dt_s = 1
"#;

#[test]
fn scenarios_with_edge_values_build_or_fail_with_an_error() {
    let keys = [
        "duration", "dt", "gps", "capacity", "base", "amp_lo", "amp_hi", "noise", "pue", "spr",
        "replicas", "level", "ripple", "noise_sd", "clip_lo", "clip_hi", "trace_s", "trace_dt",
        "pi", "sigma",
    ];
    let defaults = [
        "10", "0.1", "8", "64", "1", "1", "1", "0", "1", "2", "8", "300", "5", "1", "0", "900",
        "10", "0.1", "0.9", "0.2",
    ];
    // Each case sets three fields to edge values, the others stay valid.
    let strategy = proptest::collection::vec((0..keys.len(), edge_number()), 3);
    let built = std::cell::Cell::new(0);
    runner(300)
        .run(&strategy, |edits| {
            let mut values: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
            for (k, v) in edits {
                values[k] = v;
            }
            let mut text = SCENARIO.to_string();
            for (k, v) in keys.iter().zip(&values) {
                text = text.replace(&format!("{{{k}}}"), v);
            }
            // TOML has no bare nan/inf in integers; a parse error is an answer too.
            if let Ok(sc) = toml::from_str::<Scenario>(&text) {
                if build(&sc, Path::new("."), &Overrides::default()).is_ok() {
                    built.set(built.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    // The property holds on valid scenarios too, not only on ones refused at parsing.
    assert!(built.get() > 10, "only {} scenarios built", built.get());
}

#[test]
fn request_logs_with_edge_values_load_or_fail_with_an_error() {
    let column = || proptest::collection::vec(edge_number(), 0..6);
    let strategy = (column(), column(), column(), column());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests_summary.json");
    runner(300)
        .run(&strategy, |(ts, inputs, outputs, ttfts)| {
            // Non-finite numbers are not JSON: they come out as strings, which must be refused.
            let json = |v: &[String]| {
                let items: Vec<String> = v
                    .iter()
                    .map(|x| match x.parse::<f64>() {
                        Ok(f) if f.is_finite() => x.clone(),
                        _ => format!("{x:?}"),
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            };
            let text = format!(
                r#"{{"request_timestamps": {}, "input_lens": {}, "output_lens": {}, "ttfts": {}}}"#,
                json(&ts),
                json(&inputs),
                json(&outputs),
                json(&ttfts)
            );
            std::fs::write(&path, text).unwrap();
            let _ = read_request_log(&path);
            Ok(())
        })
        .unwrap();
}

#[test]
fn measured_csvs_with_a_corrupted_cell_load_or_fail_with_an_error() {
    let Some(src) = common::measured_run("arrival_rate") else {
        return;
    };
    let texts: Vec<(String, String)> = ["power.csv", "engine.csv"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(src.join(f)).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for f in ["manifest.json", "requests_summary.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let edits =
        proptest::collection::vec((0usize..2, 0usize..400, 0usize..14, edge_number()), 1..4);
    runner(200)
        .run(&edits, |edits| {
            let mut files: Vec<Vec<Vec<String>>> = texts
                .iter()
                .map(|(_, t)| {
                    t.lines()
                        .map(|l| l.split(',').map(String::from).collect())
                        .collect()
                })
                .collect();
            for (f, line, col, v) in edits {
                let rows = &mut files[f];
                let line = 1 + line % (rows.len() - 1);
                let row = &mut rows[line];
                let col = col % row.len();
                row[col] = v;
            }
            for ((name, _), rows) in texts.iter().zip(&files) {
                let text: Vec<String> = rows.iter().map(|r| r.join(",")).collect();
                std::fs::write(dir.path().join(name), text.join("\n")).unwrap();
            }
            let _ = load_run(dir.path());
            Ok(())
        })
        .unwrap();
}

#[test]
fn leaderboard_configurations_with_edge_values_load_or_fail_with_an_error() {
    let fields = [
        "num_gpus",
        "max_num_seqs",
        "avg_power_watts",
        "median_itl_ms",
        "p90_itl_ms",
        "p95_itl_ms",
        "p99_itl_ms",
        "output_throughput_tokens_per_sec",
        "energy_per_token_joules",
        "avg_batch_size",
    ];
    let strategy = proptest::collection::vec((0..fields.len(), edge_number()), 1..4);
    let dir = tempfile::tempdir().unwrap();
    runner(300)
        .run(&strategy, |edits| {
            let mut values = ["1", "8", "400", "10", "12", "13", "20", "500", "0.5", "7.9"]
                .map(String::from);
            for (k, v) in edits {
                values[k] = match v.parse::<f64>() {
                    Ok(f) if f.is_finite() => v,
                    _ => format!("{v:?}"),
                };
            }
            let body: Vec<String> = fields
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            let text = format!(
                r#"{{"task": "t", "configurations": [{{"model_id": "o/m", "gpu_model": "H100", {}}}]}}"#,
                body.join(", ")
            );
            std::fs::write(dir.path().join("t.json"), text).unwrap();
            let _ = powersynth::sources::leaderboard::load_dir(dir.path(), None);
            Ok(())
        })
        .unwrap();
}

/// OpenDSS feeder scripts: the IEEE 13 file with random lines replaced by edge numbers, cut
/// short, or given stray brackets, `=` and continuation marks either reads and solves (or
/// fails to converge) or fails with an error naming its file — never a panic.
#[test]
fn feeder_scripts_with_mutated_lines_never_panic() {
    use powersynth::grid::setup::{GridSetup, PreparedGrid};
    let Some(feeders) = common::shared("feeders") else {
        return;
    };
    let dir = feeders.join("ieee13");
    let text = std::fs::read_to_string(dir.join("IEEE13Bus.dss")).unwrap();
    let codes = std::fs::read_to_string(dir.join("IEEELineCodes.dss")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("IEEELineCodes.dss"), codes).unwrap();
    let mutation = prop_oneof![
        edge_number().prop_map(|n| format!("={n}")),
        Just("(".to_string()),
        Just("[1 2 |".to_string()),
        Just("~".to_string()),
        Just("=".to_string()),
        Just("\"".to_string()),
        Just("/*".to_string()),
        Just(".1.2.3.4.5".to_string()),
        Just(" bus1=".to_string()),
        Just("kV=0".to_string()),
        Just("length=-3".to_string()),
        Just("phases=0".to_string()),
    ];
    let strategy = (
        prop::collection::vec((0usize..lines.len(), 0usize..80, mutation), 1..4),
        0usize..=lines.len(),
    );
    let mut runner = runner(400);
    runner
        .run(&strategy, |(edits, keep)| {
            let mut l = lines.clone();
            for (line, at, piece) in edits {
                let s = &mut l[line];
                let cut = s
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(s.len()))
                    .find(|&i| i >= at.min(s.len()))
                    .unwrap_or(s.len());
                s.insert_str(cut, &piece);
            }
            l.truncate(keep.max(1));
            let path = tmp.path().join("f.dss");
            std::fs::write(&path, l.join("\n")).unwrap();
            let setup = GridSetup {
                source_pu: Some(1.0),
                taps: vec![],
                datacenter_buses: vec!["671".into()],
            };
            match PreparedGrid::open(&path, &setup) {
                Ok(mut g) => {
                    let _ = g.flow.solve();
                }
                Err(e) => {
                    let s = e.to_string();
                    prop_assert!(!s.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Serving settings (`synthesize --serving`) with edge values in every field: read or refused
/// with an error naming the file, never a panic.
#[test]
fn serving_settings_with_edge_values_read_or_fail_with_an_error() {
    use powersynth::engine::ServingConfig;
    let field = || {
        prop_oneof![
            edge_number(),
            Just("true".to_string()),
            Just("\"x\"".to_string()),
            Just("null".to_string()),
            Just("-4294967297".to_string()),
        ]
    };
    let flag = || {
        prop_oneof![
            3 => Just("true".to_string()),
            3 => Just("false".to_string()),
            1 => field(),
        ]
    };
    let count = || prop_oneof![2 => (1u32..5000).prop_map(|v| v.to_string()), 1 => field()];
    let strategy = (count(), count(), count(), flag(), flag(), any::<bool>());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serving.json");
    let accepted = std::cell::Cell::new(0);
    runner(300)
        .run(&strategy, |(tp, seqs, tokens, chunked, cache, extra_key)| {
            let as_json = |v: &str| match v.parse::<f64>() {
                Ok(f) if !f.is_finite() => format!("{v:?}"),
                _ => v.to_string(),
            };
            let text = format!(
                r#"{{"model": "Qwen/Qwen3-8B", "hardware": "A100", "tp": {}, "max_num_seqs": {},
                "max_num_batched_tokens": {}, "enable_chunked_prefill": {}, "enable_prefix_caching": {}{}}}"#,
                as_json(&tp),
                as_json(&seqs),
                as_json(&tokens),
                as_json(&chunked),
                as_json(&cache),
                if extra_key { r#", "max_num_seq": 8"# } else { "" }
            );
            std::fs::write(&path, text).unwrap();
            match ServingConfig::from_file(&path) {
                Ok(s) => {
                    // What is accepted is usable: at least one request, one token, one GPU.
                    prop_assert!(!extra_key, "an unknown key was accepted");
                    prop_assert!(s.tp >= 1 && s.max_num_seqs >= 1 && s.max_num_batched_tokens >= 1);
                    accepted.set(accepted.get() + 1);
                }
                Err(e) => prop_assert!(e.to_string().contains("serving.json"), "{e}"),
            }
            Ok(())
        })
        .unwrap();
    assert!(
        accepted.get() > 0,
        "no case was valid: the generator lost its valid values"
    );
}

/// Pipeline files with edge values and unknown keys: read or refused, never a panic.
#[test]
fn pipeline_files_with_edge_values_read_or_fail_with_an_error() {
    use powersynth::pipeline::PipelineConfig;
    let strategy = (
        edge_number(),
        edge_number(),
        edge_number(),
        edge_number(),
        prop_oneof![Just("robust"), Just("compatible"), Just("fast")],
        any::<bool>(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    runner(300)
        .run(&strategy, |(seed, cap, duration, dt, mode, typo)| {
            let toml_number = |v: &str| match v {
                "nan" | "inf" | "-inf" => v.to_string(),
                _ => v.to_string(),
            };
            let text = format!(
                "name = \"p\"\nseed = {}\n[source]\nkind = \"leaderboard\"\npath = \"x\"\n\
                 [itl]\nmode = \"{mode}\"\nmax_samples = {}\n[templates]\nduration_s = {}\n\
                 dt_s = {}\n{}steady_skip_s = 0.0\n",
                toml_number(&seed),
                toml_number(&cap),
                toml_number(&duration),
                toml_number(&dt),
                if typo { "dt_ss = 1.0\n" } else { "" }
            );
            std::fs::write(&path, text).unwrap();
            if let Ok(cfg) = PipelineConfig::from_file(&path) {
                prop_assert!(!typo, "an unknown key was accepted");
                if let Some(t) = &cfg.templates {
                    prop_assert!(t.dt_s.is_finite() && t.dt_s > 0.0 && t.duration_s.is_finite());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Every numeric leaf of `v` below `at`, by JSON pointer.
fn numeric_leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Number(_) => out.push(at),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(x, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                numeric_leaves(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// `value` with each edit applied to the numeric leaf its index picks in `numbers`: `x<f>`
/// scales the number by f, a finite number replaces it, anything else (NaN, inf) becomes
/// that string.
fn with_edits(
    value: &serde_json::Value,
    numbers: &[String],
    edits: &[(prop::sample::Index, String)],
) -> serde_json::Value {
    let mut v = value.clone();
    for (index, edge) in edits {
        let pointer = index.get(numbers);
        let old = v.pointer(pointer).unwrap().as_f64().unwrap();
        let new = match (edge.strip_prefix('x'), edge.parse::<f64>()) {
            (Some(factor), _) => serde_json::json!(old * factor.parse::<f64>().unwrap()),
            (None, Ok(f)) if f.is_finite() => serde_json::json!(f),
            _ => serde_json::json!(edge),
        };
        *v.pointer_mut(pointer).unwrap() = new;
    }
    v
}

/// A learned model (learned once from a real run) with one to three numbers set to edge
/// values: read or refused with an error naming the file; when read, a short synthesis runs
/// to completion or fails with an error, never a panic or a non-finite power.
#[test]
fn learned_models_with_edge_values_read_or_fail_with_an_error() {
    use powersynth::engine::ServingConfig;
    use powersynth::learn::{learn, LearnOptions, LearnedModel};
    use powersynth::workload::{Request, Workload};
    let Some(run) = common::measured_run("r2p5") else {
        return;
    };
    let model = learn(&[load_run(&run).unwrap()], &LearnOptions::default()).unwrap();
    let value = serde_json::to_value(&model).unwrap();
    let mut numbers = Vec::new();
    numeric_leaves(&value, String::new(), &mut numbers);
    assert!(numbers.len() > 100, "{} numeric fields", numbers.len());
    let serving = ServingConfig::from_manifest(&load_run(&run).unwrap().manifest);
    let workload = Workload {
        requests: (0..20)
            .map(|i| Request::new(i as f64 * 0.5, 200 + 37 * i, 50 + 11 * i))
            .collect(),
        session_names: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    // An edit sets a number to an edge value, or scales it (most numbers are power quantiles,
    // which must stay ordered: a scaled one often does, an edge value rarely).
    let edit = prop_oneof![
        edge_number(),
        (0.5f64..2.0).prop_map(|f| format!("x{f}")),
        Just("x1.000001".to_string()),
    ];
    let edits = proptest::collection::vec((any::<prop::sample::Index>(), edit), 1..4);
    let (read, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner(120)
        .run(&edits, |edits| {
            let v = with_edits(&value, &numbers, &edits);
            std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
            match LearnedModel::read_json(&path) {
                Err(e) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(e.to_string().contains("model.json"), "{e}")
                }
                Ok(m) => {
                    read.set(read.get() + 1);
                    if let Ok((p, _)) =
                        powersynth::synth::synthesize(&m, &serving, &workload, 0.0, 20.0, m.dt_s, 1)
                    {
                        prop_assert!(p.power_w.iter().all(|w| w.is_finite()), "{edits:?}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "learned models: {} read, {} refused",
        read.get(),
        refused.get()
    );
    assert!(read.get() > 0 && refused.get() > 0);
}
