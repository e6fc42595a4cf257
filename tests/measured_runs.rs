//! Measured runs from ../shared/data/measured: clock alignment, power sums, ITL fits on real
//! samples, and bad input in every file (a copy of a real run, corrupted one way at a time).

#![allow(clippy::type_complexity)] // the table of corruption cases

mod common;

use std::path::Path;

use powersynth::fits::itl_mixture::{self, ItlFitMode, ItlFitOptions};
use powersynth::sources::measured::{discover_runs, load_run, Itls};

#[test]
fn every_measured_run_loads_with_aligned_clocks() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let dirs = discover_runs(&root).unwrap();
    assert!(dirs.len() >= 6);
    for d in &dirs {
        let r = load_run(d).unwrap();
        let skew = r.clock_skew_s.unwrap();
        // The README: local time − offset reproduces reference_epoch_s within ~60 ms; the
        // first sample is at most one 0.25 s cadence after it.
        assert!(
            (-0.1..0.5).contains(&skew),
            "{}: clock skew {skew}",
            d.display()
        );
        assert_eq!(r.power.gpus, r.manifest.tp);
        // Requests happen inside the power window.
        let (t0, t1) = (r.power.t_s[0], r.power.t_s[r.power.t_s.len() - 1]);
        let first = r.requests.request_timestamps[0];
        assert!(first >= t0 - 1.0 && first <= t1, "{}", d.display());
    }
}

#[test]
fn two_gpu_power_is_the_sum_of_the_active_devices() {
    let Some(dir) = common::measured_run("gemma") else {
        return;
    };
    let r = load_run(&dir).unwrap();
    // Independent sum of the CSV's power column.
    let text = std::fs::read_to_string(dir.join("power.csv")).unwrap();
    let total: f64 = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().trim().parse::<f64>().unwrap())
        .sum();
    let ours: f64 = r.power.power_w.iter().sum();
    assert_eq!(r.power.gpus, 2);
    assert!((ours - total).abs() < 1e-6 * total, "{ours} vs {total}");
}

#[test]
fn itl_fits_on_real_samples_report_both_modes() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    // The run with per-token ITL lists (the agentic run's `requests.json` has one mean per
    // request, which are not samples).
    let x = discover_runs(&root)
        .unwrap()
        .into_iter()
        .filter(|d| d.join("requests.json").is_file())
        .find_map(|d| load_run(&d).unwrap().itl_samples())
        .unwrap();
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    // README: 42,472 samples, mean 8.0 ms.
    assert!(x.len() >= 42_000, "{}", x.len());
    assert!((mean - 0.0080).abs() < 0.0002, "{mean}");
    for mode in [ItlFitMode::Compatible, ItlFitMode::Robust] {
        let m = itl_mixture::fit(
            &x,
            &ItlFitOptions {
                mode,
                ..Default::default()
            },
        );
        let q = itl_mixture::quality(&m, &x);
        eprintln!("{mode:?}: {q:?}");
        assert!(
            q.mean_err_pct < 3.0 && q.p50_err_pct < 3.0,
            "{mode:?} {q:?}"
        );
    }
}

fn copy_run(from: &Path, to: &Path) {
    for f in [
        "manifest.json",
        "power.csv",
        "engine.csv",
        "requests_summary.json",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// `text` with field `col` of line `line` (0 = header) set to `value`, lines joined by `eol`.
fn set_field(text: &str, line: usize, col: usize, value: &str, eol: &str) -> String {
    let mut l: Vec<String> = text.lines().map(String::from).collect();
    let mut f: Vec<String> = l[line].split(',').map(String::from).collect();
    f[col] = value.to_string();
    l[line] = f.join(",");
    l.join(eol) + eol
}

#[test]
fn bad_measured_input_names_file_and_line() {
    let Some(src) = common::measured_run("arrival_rate") else {
        return;
    };
    let cases: Vec<(&str, Box<dyn Fn(&str) -> String>, &str)> = vec![
        (
            "power.csv",
            Box::new(|t: &str| t.replacen(",GPU-", ",extra,GPU-", 1)),
            "row 2: 11 columns, expected 10",
        ),
        (
            "power.csv",
            Box::new(|t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                let f: Vec<String> = l[3].split(',').map(String::from).collect();
                l[3] = [f[0].clone(), f[1].clone(), f[2].clone(), "NaN".into()]
                    .into_iter()
                    .chain(f[4..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join(",");
                l.join("\n")
            }),
            "row 4",
        ),
        (
            "power.csv",
            Box::new(|t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                let f: Vec<String> = l[5].split(',').map(String::from).collect();
                l[5] = [f[0].clone(), f[1].clone(), f[2].clone(), "950.0".into()]
                    .into_iter()
                    .chain(f[4..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join(",");
                l.join("\n")
            }),
            "2 × board limit",
        ),
        (
            "power.csv",
            Box::new(|t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                l.swap(4, 6);
                l.join("\n")
            }),
            "does not increase",
        ),
        ("power.csv", Box::new(|_| String::new()), "empty"),
        (
            "manifest.json",
            Box::new(|t: &str| t[..t.len() / 2].to_string()),
            "invalid JSON",
        ),
        (
            "engine.csv",
            Box::new(|t: &str| {
                let mut l: Vec<&str> = t.lines().collect();
                l.swap(2, 3);
                l.join("\n")
            }),
            "does not increase",
        ),
        (
            "requests_summary.json",
            Box::new(|t: &str| t.replacen("\"input_lens\": [", "\"input_lens\": [-3, ", 1)),
            "input_lens",
        ),
        // The active GPU's uuid changes after line 40: its last reading is not repeated for
        // the rest of the run.
        (
            "power.csv",
            Box::new(|t: &str| {
                let l: Vec<String> = t
                    .lines()
                    .enumerate()
                    .map(|(i, line)| {
                        if i < 40 {
                            line.to_string()
                        } else {
                            let f: Vec<&str> = line.split(',').collect();
                            let mut f: Vec<String> = f.iter().map(|x| x.to_string()).collect();
                            f[2] = " GPU-00000000-0000-0000-0000-000000000000".into();
                            f.join(",")
                        }
                    })
                    .collect();
                l.join("\n")
            }),
            "has not reported for 5 samples",
        ),
        // Requests on another clock than the power (a day later): refused, not all idle.
        (
            "requests_summary.json",
            Box::new(|t: &str| {
                let mut v: serde_json::Value = serde_json::from_str(t).unwrap();
                for x in v["request_timestamps"].as_array_mut().unwrap() {
                    *x = serde_json::json!(x.as_f64().unwrap() + 86_400.0);
                }
                v.to_string()
            }),
            "different clocks",
        ),
        // Engine counters: NaN, negative and absurd values are refused with their CSV line,
        // counted right in a CRLF file (the engine logger writes CRLF).
        (
            "engine.csv",
            Box::new(|t: &str| set_field(t, 3, 1, "nan", "\r\n")),
            "row 4: column \"num_requests_running\"",
        ),
        (
            "engine.csv",
            Box::new(|t: &str| set_field(t, 5, 4, "-5", "\r\n")),
            "row 6: column \"prompt_tokens_total\": -5",
        ),
        (
            "engine.csv",
            Box::new(|t: &str| set_field(t, 7, 5, "1e308", "\n")),
            "row 8: column \"generation_tokens_total\"",
        ),
    ];
    for (file, corrupt, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_run(&src, dir.path());
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        std::fs::write(dir.path().join(file), corrupt(&text)).unwrap();
        let e = load_run(dir.path()).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(needle), "{file}: {e}");
    }
}

/// The agentic run's `requests.json`: `itls` as one mean per request, requests listed session
/// by session. It loads in arrival order, every column permuted alike (checked against
/// `requests_summary.json`, which is in arrival order), and its cache hits add up to the
/// counters' increase (README: 1,081,456 of 1,182,555 prompt tokens).
#[test]
fn agentic_run_loads_in_arrival_order_with_per_request_itls() {
    let Some(dir) = common::measured_run("agentic") else {
        return;
    };
    let r = load_run(&dir).unwrap();
    let q = &r.requests;
    assert!(q.path.ends_with("requests.json"));
    assert!(q.request_timestamps.windows(2).all(|w| w[0] <= w[1]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("requests_summary.json")).unwrap())
            .unwrap();
    let col = |k: &str| -> Vec<u64> {
        summary[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let as64 = |v: &[u32]| v.iter().map(|&x| x as u64).collect::<Vec<_>>();
    assert_eq!(as64(&q.input_lens), col("input_lens"));
    assert_eq!(as64(&q.output_lens), col("output_lens"));
    assert_eq!(as64(q.turn_idx.as_ref().unwrap()), col("turn_idx"));
    let cached = q.cached_prompt_tokens.as_ref().unwrap();
    assert_eq!(as64(cached), col("cached_prompt_tokens"));
    assert_eq!(cached.iter().map(|&c| c as u64).sum::<u64>(), 1_081_456);
    assert_eq!(
        q.input_lens.iter().map(|&c| c as u64).sum::<u64>(),
        1_182_555
    );
    match &q.itls {
        Some(Itls::MeanPerRequest(m)) => {
            assert_eq!(m.len(), q.input_lens.len());
            assert!(m.iter().all(|&x| x > 0.001 && x < 1.0));
        }
        other => panic!("expected one ITL mean per request, got {other:?}"),
    }
    assert!(r.itl_samples().is_none());
    // Counters: the hits' increase matches the per-request column.
    let hits = &r.engine.prefix_cache_hits_total;
    assert_eq!(hits[hits.len() - 1] - hits[0], 1_081_456.0);
}

/// Inconsistent session fields are refused with the file, the row and what is wrong.
#[test]
fn inconsistent_session_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.json");
    let base = |extra: &str| {
        format!(
            r#"{{"request_timestamps": [1.0, 2.0, 3.0], "input_lens": [100, 200, 300],
            "output_lens": [5, 5, 5], "session_ids": ["a", "a", "b"]{extra}}}"#
        )
    };
    let cases = [
        (
            r#", "turn_idx": [1, 0, 0]"#,
            "turn_idx 0 arrives after turn 1",
        ),
        (
            r#", "prefix_tokens": [0, 250, 0]"#,
            "prefix_tokens[1] = 250 is longer than the prompt",
        ),
        (
            r#", "prefix_tokens": [0, 100, 0], "new_input_tokens": [100, 101, 300]"#,
            "prefix_tokens 100 + new_input_tokens 101 is more than input_lens 200",
        ),
        (r#", "turn_idx": [0, 1]"#, "\"turn_idx\" has 2 entries"),
        (r#", "itls": [[0.01], 0.02, [0.01]]"#, "mixes"),
    ];
    for (extra, needle) in cases {
        std::fs::write(&path, base(extra)).unwrap();
        let e = powersynth::sources::measured::read_request_log(&path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("requests.json") && e.contains(needle),
            "{extra}: {e}"
        );
    }
    // Listed out of arrival order is fine: the log comes back sorted, turns in order.
    std::fs::write(
        &path,
        r#"{"request_timestamps": [2.0, 1.0], "input_lens": [200, 100], "output_lens": [5, 6],
        "session_ids": ["a", "a"], "turn_idx": [1, 0]}"#,
    )
    .unwrap();
    let log = powersynth::sources::measured::read_request_log(&path).unwrap();
    assert_eq!(log.input_lens, vec![100, 200]);
    assert_eq!(log.output_lens, vec![6, 5]);
    assert_eq!(log.turn_idx, Some(vec![0, 1]));
}
