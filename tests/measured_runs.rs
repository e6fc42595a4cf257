//! Measured runs from ../shared/data/measured: clock alignment, power sums, ITL fits on real
//! samples, and bad input in every file (a copy of a real run, corrupted one way at a time).

#![allow(clippy::type_complexity)] // the table of corruption cases

mod common;

use std::path::Path;

use powersynth::fits::itl_mixture::{self, ItlFitMode, ItlFitOptions};
use powersynth::sources::measured::{discover_runs, load_run};

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
    let Some(root) = common::shared("measured") else {
        return;
    };
    let dir = discover_runs(&root)
        .unwrap()
        .into_iter()
        .find(|d| d.to_string_lossy().contains("gemma"))
        .unwrap();
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
    let dir = discover_runs(&root)
        .unwrap()
        .into_iter()
        .find(|d| d.join("requests.json").is_file())
        .unwrap();
    let r = load_run(&dir).unwrap();
    let x = r.itl_samples().unwrap();
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

#[test]
fn bad_measured_input_names_file_and_line() {
    let Some(root) = common::shared("measured") else {
        return;
    };
    let src = discover_runs(&root)
        .unwrap()
        .into_iter()
        .find(|d| d.to_string_lossy().contains("arrival_rate"))
        .unwrap();
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
