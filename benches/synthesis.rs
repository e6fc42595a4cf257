//! Synthesis throughput: bins per second for one replica (engine simulation + power draws),
//! one hour of Poisson traffic at 2.5 req/s with ShareGPT token counts, at 0.25 s. Learns the
//! model from the real A100 runs in ../shared (skipped when they are absent).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;
use rand_pcg::Pcg64;

use powersynth::engine::ServingConfig;
use powersynth::learn::{learn, LearnOptions};
use powersynth::sources::measured::{discover_runs, load_run};
use powersynth::synth::synthesize;
use powersynth::workload::{EmpiricalTokens, Workload};

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/measured");
    let Ok(dirs) = discover_runs(&root) else {
        eprintln!("skipped: {} not found", root.display());
        return;
    };
    let runs: Vec<_> = dirs
        .iter()
        .filter(|d| d.to_string_lossy().contains("arrival_"))
        .map(|d| load_run(d).unwrap())
        .collect();
    let model = learn(&runs, &LearnOptions::default()).unwrap();
    let serving = ServingConfig::from_manifest(&runs[0].manifest);
    let log = Workload::from_request_log(&runs[0].requests.path).unwrap();
    let tokens = EmpiricalTokens::from_workload(&log).unwrap();
    let mut rng = Pcg64::seed_from_u64(1);
    let w = Workload::poisson(2.5, 0.0, 3600.0, &tokens, &mut rng).unwrap();
    let mut g = c.benchmark_group("synthesis");
    g.sample_size(10);
    g.throughput(Throughput::Elements(14_400));
    g.bench_function("one_replica_1h_at_0.25s", |b| {
        b.iter(|| synthesize(&model, &serving, &w, 0.0, 3600.0, 0.25, 7).unwrap())
    });
    g.finish();
    // A 1,000-server site (one replica per server), one hour at 1 s.
    let layout = powersynth::site::SiteLayout {
        servers: 1000,
        replicas_per_server: 1,
        servers_per_rack: 20,
        racks_per_row: 10,
        non_gpu_w_per_server: 800.0,
        pue: 1.2,
    };
    let mut rng = Pcg64::seed_from_u64(2);
    let site_w = Workload::poisson(2500.0, 0.0, 3600.0, &tokens, &mut rng).unwrap();
    let mut g = c.benchmark_group("site");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1000 * 14_400));
    g.bench_function("1000_servers_1h_at_1s", |b| {
        b.iter(|| {
            powersynth::site::synthesize_site(
                &model,
                &serving,
                &layout,
                &site_w,
                powersynth::synth::OutputWindow {
                    t0_s: 0.0,
                    duration_s: 3600.0,
                    dt_s: 1.0,
                },
                7,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
