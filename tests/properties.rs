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
