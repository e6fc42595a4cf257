//! Datacenter steps per second of the embedded coordinator on the peer's bench scenario
//! (benches/scenarios/openg2g-parity.toml) at 1,000 / 10,000 / 100,000 GPUs, one tick (0.1 s,
//! with the noop controller every 10 ticks) per iteration, no output. Peer (openg2g
//! 0.2.0.post1, same scenario, same host): see the README's coordinator table.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use powersynth::scenario::{build, Overrides, Scenario};

fn steps(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios/openg2g-parity.toml");
    let sc = Scenario::from_file(&path).expect("parity scenario");
    let mut g = c.benchmark_group("coordinator_dc_step");
    g.throughput(Throughput::Elements(1));
    for gpus in [1_000u64, 10_000, 100_000] {
        let ov = Overrides {
            gpus: Some(gpus),
            duration_s: Some(600.0),
            seed: None,
            shard: None,
        };
        let mut built = build(&sc, path.parent().expect("folder"), &ov).expect("build");
        let coord = &mut built.coordinator;
        coord.reset();
        coord.start().expect("start");
        g.bench_function(format!("{gpus}_gpus"), |b| {
            b.iter(|| {
                coord.step().expect("step");
            })
        });
        coord.stop();
    }
    g.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
