//! Loader and trace-stage speed: a results.json timeline and ITL extraction, the median trace
//! of runs (the peer's `_build_trace_store_from_timelines` input: 2 models × 7 batches × 3 runs
//! × 300 s, 126,000 rows), templates (14 traces → 3,600 s at 0.1 s), and a real measured run
//! when ../shared is present.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use powersynth::sources::mlenergy::{PowerMetric, RunResults};
use powersynth::traces::{build_template, median_trace, InferenceTrace, TemplateOptions};

fn bench(c: &mut Criterion) {
    let runs: Vec<(Vec<f64>, Vec<f64>)> = (0..3)
        .map(|r| {
            let t: Vec<f64> = (0..3000)
                .map(|i| i as f64 * 0.1 + 0.003 * r as f64)
                .collect();
            let p = t.iter().map(|x| 400.0 + 50.0 * (x * 0.7).sin()).collect();
            (t, p)
        })
        .collect();
    c.bench_function(
        "median trace of 3 runs × 300 s → 0.1 s grid, ×14 (126k rows)",
        |b| {
            b.iter(|| {
                (0..14)
                    .map(|_| median_trace(black_box(&runs), 0.1, 1).unwrap().t_s.len())
                    .sum::<usize>()
            })
        },
    );
    let trace = InferenceTrace::new(
        (0..600).map(|i| i as f64 * 0.1).collect(),
        (0..600).map(|i| 300.0 + (i % 37) as f64).collect(),
        4,
    )
    .unwrap();
    let opts = TemplateOptions {
        duration_s: 3600.0,
        dt_s: 0.1,
        steady_skip_s: 0.0,
    };
    c.bench_function("14 templates, 60 s traces → 3600 s at 0.1 s", |b| {
        b.iter(|| {
            (0..14)
                .map(|_| build_template(black_box(&trace), &opts).unwrap().len())
                .sum::<usize>()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("results.json");
    let d: Vec<String> = (0..3000)
        .map(|i| format!("[{}, {}]", 1000.0 + i as f64 * 0.1, 300.0 + (i % 17) as f64))
        .collect();
    let reqs: Vec<String> = (0..2000)
        .map(|_| {
            format!(
                "{{\"success\": true, \"itl\": [{}]}}",
                vec!["0.011"; 100].join(",")
            )
        })
        .collect();
    std::fs::write(&p, format!(r#"{{"results": [{}], "timeline": {{"steady_state_start_time": 1010, "steady_state_end_time": 1290, "power": {{"device_instant": {{"0": [{d}], "1": [{d}]}}}}}}}}"#, reqs.join(","), d = d.join(","))).unwrap();
    c.bench_function(
        "results.json (2 GPUs × 3000 samples, 200k ITLs): parse + timeline + ITL",
        |b| {
            b.iter(|| {
                let r = RunResults::read(&p).unwrap();
                (
                    r.power_timeline(PowerMetric::DeviceInstant)
                        .unwrap()
                        .power_w
                        .len(),
                    r.itl_samples().unwrap().len(),
                )
            })
        },
    );
    let measured = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/measured");
    if let Ok(dirs) = powersynth::sources::measured::discover_runs(&measured) {
        if let Some(d) = dirs.iter().find(|d| d.join("requests.json").is_file()) {
            c.bench_function("measured run with requests.json (H100 Qwen3-8B)", |b| {
                b.iter(|| powersynth::sources::measured::load_run(black_box(d)).unwrap())
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
