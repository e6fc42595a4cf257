//! The leaderboard pipeline on the real ML.ENERGY leaderboard: the refined logistic fits are
//! never worse than the peer's grid optimum (computed here independently from the raw JSON),
//! strictly better on most groups, and the embedded default is exactly what it produces.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use powersynth::pipeline::{self, CompactFits, PipelineConfig, RunOptions, SourceConfig};
use powersynth::shard::Shard;
use powersynth::table::ParquetTable;

type Key = (String, String, String, i64);
type Points = BTreeMap<(Key, &'static str), (Vec<f64>, Vec<f64>)>;

/// Per group and metric, (x = log2 batch, y = median over configs) read straight from the files.
fn points_from_json(dir: &Path) -> Points {
    let mut raw: BTreeMap<(Key, &'static str), BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let task = doc["task"].as_str().unwrap().to_string();
        for c in doc["configurations"].as_array().unwrap() {
            let key = (
                task.clone(),
                c["model_id"].as_str().unwrap().to_string(),
                c["gpu_model"].as_str().unwrap().to_string(),
                c["num_gpus"].as_i64().unwrap(),
            );
            let b = c["max_num_seqs"].as_i64().unwrap();
            for (m, field, scale) in [
                ("power", "avg_power_watts", 1.0),
                ("latency", "median_itl_ms", 1e-3),
                ("throughput", "output_throughput_tokens_per_sec", 1.0),
            ] {
                raw.entry((key.clone(), m))
                    .or_default()
                    .entry(b)
                    .or_default()
                    .push(c[field].as_f64().unwrap() * scale);
            }
        }
    }
    raw.into_iter()
        .map(|(k, by_b)| {
            let (x, y): (Vec<f64>, Vec<f64>) = by_b
                .into_iter()
                .map(|(b, mut v)| {
                    v.sort_by(f64::total_cmp);
                    let n = v.len();
                    let med = if n % 2 == 1 {
                        v[n / 2]
                    } else {
                        0.5 * (v[n / 2 - 1] + v[n / 2])
                    };
                    ((b as f64).log2(), med)
                })
                .unzip();
            (k, (x, y))
        })
        .collect()
}

/// The peer's grid optimum (40 x0 × 60 log-spaced k; b0, L by ordinary least squares), written
/// independently of the crate: minimal SSE over the grid.
fn grid_optimum_sse(x: &[f64], y: &[f64]) -> f64 {
    let (lo, hi) = x
        .iter()
        .fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
    let mut best = f64::INFINITY;
    for i in 0..40 {
        let x0 = (lo - 1.0) + (hi - lo + 2.0) * i as f64 / 39.0;
        for j in 0..60 {
            let k = 10f64.powf(-2.0 + 4.0 * j as f64 / 59.0);
            let s: Vec<f64> = x
                .iter()
                .map(|&xi| 1.0 / (1.0 + (-k * (xi - x0)).exp()))
                .collect();
            // Normal equations of y ≈ b0 + L s.
            let n = s.len() as f64;
            let (ss, sy, s2, sys) = (
                s.iter().sum::<f64>(),
                y.iter().sum::<f64>(),
                s.iter().map(|v| v * v).sum::<f64>(),
                s.iter().zip(y).map(|(a, b)| a * b).sum::<f64>(),
            );
            let det = n * s2 - ss * ss;
            if det.abs() < 1e-18 {
                continue;
            }
            let l = (n * sys - ss * sy) / det;
            let b0 = (sy - l * ss) / n;
            let sse: f64 = s
                .iter()
                .zip(y)
                .map(|(si, yi)| (b0 + l * si - yi).powi(2))
                .sum();
            best = best.min(sse);
        }
    }
    best
}

#[test]
fn refined_logistic_fits_beat_the_grid_on_real_leaderboard() {
    let Some(dir) = common::shared("mlenergy-leaderboard") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let cfg = PipelineConfig::from_file(Path::new("pipelines/leaderboard.toml")).unwrap();
    let cfg = PipelineConfig {
        measured: None,
        templates: None,
        ..cfg
    };
    let summary = pipeline::run(
        &cfg,
        &RunOptions {
            out_dir: out.path().to_path_buf(),
            force: false,
            source_path: Some(dir.clone()),
            measured_path: None,
            pipeline_file: None,
            progress: &common::Quiet,
            shard: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(
        summary.groups, 114,
        "README of the leaderboard data: 38+28+6+26+16 groups"
    );

    let t = ParquetTable::read(&out.path().join("fits/logistic_fits/part-0.parquet")).unwrap();
    let (task, model, gpu, ng, metric) = (
        t.strings("task").unwrap(),
        t.strings("model_id").unwrap(),
        t.strings("gpu_model").unwrap(),
        t.integers("num_gpus").unwrap(),
        t.strings("metric").unwrap(),
    );
    let (l, x0, k, b0, n_points) = (
        t.floats("L").unwrap(),
        t.floats("x0").unwrap(),
        t.floats("k").unwrap(),
        t.floats("b0").unwrap(),
        t.integers("n_points").unwrap(),
    );
    let points = points_from_json(&dir);
    let (mut checked, mut strictly) = (0, 0);
    let mut groups_strict: BTreeMap<Key, bool> = BTreeMap::new();
    for i in 0..t.num_rows() {
        let key: Key = (
            task[i].clone().unwrap(),
            model[i].clone().unwrap(),
            gpu[i].clone().unwrap(),
            ng[i],
        );
        let m: &'static str = match metric[i].as_deref().unwrap() {
            "power" => "power",
            "latency" => "latency",
            _ => "throughput",
        };
        let (x, y) = &points[&(key.clone(), m)];
        assert_eq!(n_points[i] as usize, x.len(), "{key:?} {m}");
        if x.len() < 3 {
            continue;
        }
        let sse: f64 = x
            .iter()
            .zip(y)
            .map(|(&xi, &yi)| (b0[i] + l[i] / (1.0 + (-k[i] * (xi - x0[i])).exp()) - yi).powi(2))
            .sum();
        let grid = grid_optimum_sse(x, y);
        let scale = y.iter().map(|v| v * v).sum::<f64>();
        assert!(
            sse <= grid + 1e-9 * scale,
            "{key:?} {m}: refined SSE {sse} > grid {grid}"
        );
        checked += 1;
        let strict = sse < grid * (1.0 - 1e-9);
        if strict {
            strictly += 1;
        }
        let e = groups_strict.entry(key).or_insert(true);
        *e &= strict;
    }
    let strict_groups = groups_strict.values().filter(|&&s| s).count();
    eprintln!("{checked} curves checked, {strictly} strictly better; {strict_groups}/{} groups strictly better on every metric", groups_strict.len());
    assert!(checked >= 300);
    assert!(
        strict_groups * 2 > groups_strict.len(),
        "strictly lower on most groups"
    );

    // A second run reuses every spec folder and writes identical tables.
    let before = std::fs::read(out.path().join("fits/logistic_fits/part-0.parquet")).unwrap();
    let again = pipeline::run(
        &cfg,
        &RunOptions {
            out_dir: out.path().to_path_buf(),
            force: false,
            source_path: Some(dir),
            measured_path: None,
            pipeline_file: None,
            progress: &common::Quiet,
            shard: Default::default(),
        },
    )
    .unwrap();
    assert_eq!((again.groups_built, again.groups_loaded), (0, 114));
    let after = std::fs::read(out.path().join("fits/logistic_fits/part-0.parquet")).unwrap();
    assert!(
        before == after,
        "tables differ after reusing the spec cache"
    );

    // The embedded default is what this pipeline derives from the real data.
    let made: CompactFits = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("fits/default_fits.json")).unwrap(),
    )
    .unwrap();
    let embedded: CompactFits =
        serde_json::from_str(&std::fs::read_to_string("data/default/fits.json").unwrap()).unwrap();
    assert_eq!(made.groups.len(), embedded.groups.len());
    for (a, b) in made.groups.iter().zip(&embedded.groups) {
        assert_eq!(a.model_label, b.model_label);
        for (m, c) in &a.logistic {
            // Compare the curves where they are used (parameters of a flat SSE valley may
            // differ in the 8th digit between optimised and debug builds).
            let e = &b.logistic[m];
            for &batch in &a.batch_sizes {
                let (u, v) = (c.fit.eval_batch(batch), e.fit.eval_batch(batch));
                assert!(
                    (u - v).abs() <= 1e-7 * u.abs().max(1e-9),
                    "{} {m} at batch {batch}: {u} vs embedded {v}",
                    a.model_label
                );
            }
        }
        for (batch, r) in &a.itl {
            let (u, v) = (
                r.mixture.quantile(0.99),
                b.itl[batch].mixture.quantile(0.99),
            );
            // Under-determined fit (4 percentiles, 5 parameters): builds differ ~1e-4; the fit
            // error itself is ~1e-2.
            assert!(
                (u / v - 1.0).abs() < 1e-3,
                "{} ITL p99 at batch {batch}: {u} vs embedded {v}",
                a.model_label
            );
        }
        assert_eq!(
            a.itl.keys().collect::<Vec<_>>(),
            b.itl.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        made.derived_from["inputs"], embedded.derived_from["inputs"],
        "embedded default derived from other leaderboard files"
    );
}

#[test]
fn percentile_itl_fits_reproduce_the_published_percentiles() {
    let Some(dir) = common::shared("mlenergy-leaderboard") else {
        return;
    };
    let (_, configs) = powersynth::sources::leaderboard::load_dir(&dir, None).unwrap();
    assert_eq!(configs.len(), 838);
    let mut errs = Vec::new();
    for c in configs.iter().step_by(7) {
        let f = powersynth::fits::itl_percentiles::fit(&[
            (0.5, c.median_itl_s),
            (0.9, c.p90_itl_s),
            (0.95, c.p95_itl_s),
            (0.99, c.p99_itl_s),
        ])
        .unwrap();
        let worst = [
            (0.5, c.median_itl_s),
            (0.9, c.p90_itl_s),
            (0.95, c.p95_itl_s),
            (0.99, c.p99_itl_s),
        ]
        .iter()
        .map(|&(q, v)| (f.mixture.quantile(q) / v - 1.0).abs())
        .fold(0.0, f64::max);
        errs.push(worst);
    }
    errs.sort_by(f64::total_cmp);
    let median = errs[errs.len() / 2];
    eprintln!(
        "percentile ITL fits: median worst-percentile error {:.2} %, max {:.2} %",
        100.0 * median,
        100.0 * errs[errs.len() - 1]
    );
    assert!(median < 0.02, "median worst-percentile error {median}");
}

#[test]
fn a_pipeline_that_fails_on_its_source_leaves_no_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cfg = PipelineConfig::from_file(Path::new("pipelines/leaderboard.toml")).unwrap();
    let err = pipeline::run(
        &cfg,
        &RunOptions {
            out_dir: out.clone(),
            force: false,
            source_path: Some(tmp.path().join("no-such-leaderboard")),
            measured_path: None,
            pipeline_file: None,
            progress: &common::Quiet,
            shard: Default::default(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no-such-leaderboard"), "{err}");
    assert!(!out.exists(), "an empty output folder was left behind");
}

#[test]
fn sharded_pipeline_merges_to_the_unsplit_outputs_byte_for_byte() {
    let (Some(board), Some(measured)) = (
        common::shared("mlenergy-leaderboard"),
        common::shared("measured"),
    ) else {
        return;
    };
    // Two measured runs (request summaries only: no EM), so the templates come from traces.
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    for name in [
        "arrival_pattern_qwen3-8b_a100_smooth",
        "arrival_rate_qwen3-8b_a100_r2p5",
    ] {
        std::os::unix::fs::symlink(measured.join(name), runs.join(name)).unwrap();
    }
    // Two tasks of the leaderboard (28 + 6 groups, split over 3 shards) keep it quick.
    let mut cfg = PipelineConfig::from_file(Path::new("pipelines/leaderboard.toml")).unwrap();
    cfg.source = SourceConfig::Leaderboard {
        path: board.clone(),
        tasks: Some(vec!["gpqa".into(), "sourcegraph-fim".into()]),
    };
    let opts = |out: &Path, shard: Shard| RunOptions {
        out_dir: out.to_path_buf(),
        force: false,
        source_path: Some(board.clone()),
        measured_path: Some(runs.clone()),
        pipeline_file: None,
        progress: &common::Quiet,
        shard,
    };
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    let unsplit = pipeline::run(&cfg, &opts(&whole, Shard::WHOLE)).unwrap();
    // Merging before every shard ran is refused, naming the missing ones.
    pipeline::run(&cfg, &opts(&split, Shard::new(0, 3).unwrap())).unwrap();
    let err = pipeline::shards::merge(&cfg, &opts(&split, Shard::WHOLE))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shards [1, 2] of 3 are missing"), "{err}");
    let mut groups = 0;
    for i in 0..3 {
        let s = pipeline::run(&cfg, &opts(&split, Shard::new(i, 3).unwrap())).unwrap();
        groups += s.groups;
    }
    assert_eq!(groups, unsplit.groups);
    assert_eq!(
        unsplit.groups, 34,
        "README of the leaderboard data: gpqa 28 + sourcegraph-fim 6"
    );
    let merged = pipeline::shards::merge(&cfg, &opts(&split, Shard::WHOLE)).unwrap();
    assert_eq!(merged.groups, unsplit.groups);
    assert_eq!(
        merged.refined_strictly_better,
        unsplit.refined_strictly_better
    );
    assert_eq!(merged.outputs, unsplit.outputs);
    for (file, _) in &unsplit.outputs {
        let (a, b) = (
            std::fs::read(whole.join(file)).unwrap(),
            std::fs::read(split.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs");
    }
    assert!(unsplit
        .outputs
        .iter()
        .any(|(f, rows)| f == "templates/templates.parquet" && *rows > 0));
    // Nothing of the shards is left beside the merged files.
    assert!(!split.join("shards").exists());
    assert!(!split.join("fits/logistic_fits/shard=0").exists());
}

/// A broken measured run is found before anything is written (no specs/, no fits/).
#[test]
fn measured_runs_are_checked_before_the_first_write() {
    let Some(board) = common::shared("mlenergy-leaderboard") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let bad = runs.join("bad_run");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("manifest.json"), "{ not json").unwrap();
    std::fs::write(bad.join("power.csv"), "timestamp,power\n").unwrap();
    let mut cfg = PipelineConfig::from_file(Path::new("pipelines/leaderboard.toml")).unwrap();
    if let SourceConfig::Leaderboard { tasks, .. } = &mut cfg.source {
        *tasks = Some(vec!["gpqa".into()]);
    }
    cfg.templates = None;
    let out = tmp.path().join("out");
    let opts = RunOptions {
        out_dir: out.clone(),
        force: false,
        source_path: Some(board.clone()),
        measured_path: Some(runs.clone()),
        pipeline_file: None,
        progress: &common::Quiet,
        shard: Default::default(),
    };
    let err = pipeline::run(&cfg, &opts).unwrap_err();
    assert!(err.to_string().contains("bad_run"), "{err}");
    assert!(
        !out.exists(),
        "wrote {} before checking the measured runs",
        out.display()
    );
}
