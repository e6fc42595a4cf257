//! One grid step of the native power flow as GRID.md ("Grid step") times OpenDSS's: every
//! datacenter's three single-phase loads set to new kW (pf 0.95), a solve warm-started from the
//! previous step, all node voltages read in per unit. The load alternates 500 kW/phase ± 2 %
//! between iterations, as in a co-simulation; tolerance 1e-4 as OpenDSS. Feeders and setups
//! (source pu, datacenter buses, initial taps) from GRID.md's table; skipped when
//! ../shared/data/feeders is absent. Also the prepare cost (`PreparedGrid::open`) on IEEE 123.
//! OpenDSS's C API from Rust on this machine: 7.8 / 25.9 / 41 µs (IEEE 13 / 34 / 123).

use std::path::{Path, PathBuf};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use powersynth::grid::setup::{GridSetup, PreparedGrid};

fn taps(list: &[(&str, i32)]) -> Vec<(String, i32)> {
    list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

fn buses(list: &[&str]) -> Vec<String> {
    list.iter().map(|b| b.to_string()).collect()
}

/// (bench id, feeder file, setup), GRID.md's table.
fn feeders(root: &Path) -> Vec<(&'static str, PathBuf, GridSetup)> {
    vec![
        (
            "ieee13",
            root.join("ieee13/IEEE13Bus.dss"),
            GridSetup {
                source_pu: Some(1.0),
                taps: taps(&[("creg1a", 14), ("creg1b", 6), ("creg1c", 15)]),
                datacenter_buses: buses(&["671"]),
            },
        ),
        (
            "ieee34",
            root.join("ieee34/IEEE34Bus.dss"),
            GridSetup {
                source_pu: Some(1.09),
                taps: taps(&[
                    ("creg1a", 12),
                    ("creg1b", 8),
                    ("creg1c", 10),
                    ("creg2a", 8),
                    ("creg2b", 8),
                    ("creg2c", 8),
                ]),
                datacenter_buses: buses(&["850", "834"]),
            },
        ),
        (
            "ieee123",
            root.join("ieee123/IEEE123Bus.dss"),
            GridSetup {
                source_pu: Some(1.0),
                taps: taps(&[
                    ("creg1a", 9),
                    ("creg2a", 5),
                    ("creg3a", 5),
                    ("creg3c", 5),
                    ("creg4a", 14),
                    ("creg4b", 1),
                    ("creg4c", 4),
                ]),
                datacenter_buses: buses(&["8", "23", "60", "105"]),
            },
        ),
    ]
}

/// kW per phase of step `k`: 500 ± 2 %, phases slightly unbalanced.
fn step_kw(k: u64) -> [f64; 3] {
    let s = [1.02, 0.98][(k % 2) as usize];
    [500.0 * s, 495.0 * s, 505.0 * s]
}

/// One step: loads set, solve, voltages read; returns the solve's iterations.
fn step(grid: &mut PreparedGrid, k: u64) -> usize {
    let kw = step_kw(k);
    for a in 0..grid.attachments.len() {
        grid.set_datacenter_kw(a, kw, 0.95);
    }
    let report = grid.flow.solve().expect("grid step converges");
    black_box(grid.flow.voltages_pu());
    report.iterations
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/feeders");
    if !root.is_dir() {
        eprintln!("grid bench skipped: {} not found", root.display());
        return;
    }
    let feeders = feeders(&root);
    let mut g = c.benchmark_group("grid_step");
    for (id, path, setup) in &feeders {
        let mut grid = PreparedGrid::open(path, setup).expect("feeder prepares");
        grid.flow.options.tolerance_pu = 1e-4;
        // Settle on the alternating load first so every timed step is a warm-started one.
        for k in 0..4 {
            step(&mut grid, k);
        }
        let (mut total, mut min, mut max) = (0usize, usize::MAX, 0usize);
        for k in 0..1000 {
            let it = step(&mut grid, k);
            total += it;
            min = min.min(it);
            max = max.max(it);
        }
        let nodes = grid.flow.voltages().len();
        eprintln!(
            "grid_step/{id}: {nodes} nodes, {} datacenters, iterations per step mean {:.2} \
             (min {min}, max {max})",
            grid.attachments.len(),
            total as f64 / 1000.0
        );
        let mut k = 0u64;
        g.bench_function(*id, |b| {
            b.iter(|| {
                k += 1;
                step(&mut grid, k)
            })
        });
    }
    g.finish();

    let (_, path, setup) = &feeders[2];
    let mut g = c.benchmark_group("grid_prepare");
    g.sample_size(10);
    g.bench_function("ieee123", |b| {
        b.iter(|| PreparedGrid::open(black_box(path), setup).expect("feeder prepares"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
