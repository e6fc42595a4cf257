//! Fit speed on the peer's own benchmark inputs (peer spec §10): LogisticModel.fit on 8 points,
//! ITLMixtureModel.fit on 100,000 samples (no cap) and with the pipeline's 2,048 cap.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use powersynth::fits::itl_mixture::{self, ItlFitMode, ItlFitOptions, ItlMixture};
use powersynth::fits::{itl_percentiles, logistic};
use rand::SeedableRng;

fn bench(c: &mut Criterion) {
    let x: Vec<f64> = [8u32, 16, 32, 64, 128, 256, 512, 1024]
        .iter()
        .map(|&b| (b as f64).log2())
        .collect();
    let y = [300.0, 320.0, 360.0, 430.0, 520.0, 590.0, 625.0, 640.0];
    c.bench_function("logistic fit_grid (peer algorithm), 8 points", |b| {
        b.iter(|| logistic::fit_grid(black_box(&x), black_box(&y)))
    });
    c.bench_function("logistic fit (grid + argmin refinement), 8 points", |b| {
        b.iter(|| logistic::fit(black_box(&x), black_box(&y)))
    });
    let truth = ItlMixture {
        loc: 0.004,
        pi_steady: 0.85,
        sigma_steady: 0.15,
        scale_steady: 0.006,
        pi_stall: 0.15,
        sigma_stall: 0.35,
        scale_stall: 0.04,
    };
    let mut rng = rand_pcg::Pcg64::seed_from_u64(1);
    let samples: Vec<f64> = (0..100_000).map(|_| truth.sample_one(&mut rng)).collect();
    for (name, mode, cap) in [
        (
            "ITL fit compatible, 100k samples, no cap",
            ItlFitMode::Compatible,
            None,
        ),
        (
            "ITL fit compatible, 100k samples, cap 2048",
            ItlFitMode::Compatible,
            Some(2048),
        ),
        (
            "ITL fit robust, 100k samples, cap 2048",
            ItlFitMode::Robust,
            Some(2048),
        ),
    ] {
        let opts = ItlFitOptions {
            mode,
            max_samples: cap,
            seed: 0,
        };
        c.bench_function(name, |b| {
            b.iter(|| itl_mixture::fit(black_box(&samples), &opts))
        });
    }
    let pts = [(0.5, 0.010), (0.9, 0.013), (0.95, 0.016), (0.99, 0.045)];
    c.bench_function("ITL fit from 4 percentiles", |b| {
        b.iter(|| itl_percentiles::fit(black_box(&pts)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
