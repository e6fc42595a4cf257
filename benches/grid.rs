//! One grid step of the native power flow as GRID.md ("Grid step") times OpenDSS's: every
//! datacenter's three single-phase loads set to new kW (pf 0.95), a solve warm-started from the
//! previous step, all node voltages read in per unit. The load alternates 500 kW/phase ± 2 %
//! between iterations, as in a co-simulation; tolerance 1e-4 as OpenDSS. Feeders and setups
//! (source pu, datacenter buses, initial taps) from GRID.md's table; skipped when
//! ../shared/data/feeders is absent. Also the prepare cost (`PreparedGrid::open`) on IEEE 123.
//! OpenDSS's C API from Rust on this machine: 7.8 / 25.9 / 41 µs (IEEE 13 / 34 / 123).
//! `grid_step_walk` times the same step with every datacenter phase on its own random walk
//! (up to ±10 % per step), so the warm start's predictor cannot lean on the alternation.

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

/// Every datacenter phase's kW on its own multiplicative random walk (xorshift, fixed seed):
/// up to ±10 % per step, kept within 250–750 kW.
struct Walk {
    state: u64,
    kw: Vec<[f64; 3]>,
}

impl Walk {
    fn new(datacenters: usize) -> Walk {
        Walk {
            state: 0x9E37_79B9_7F4A_7C15,
            kw: vec![[500.0; 3]; datacenters],
        }
    }

    /// Uniform in [−0.5, 0.5).
    fn uniform(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// One walk step; returns the solve's iterations.
    fn step(&mut self, grid: &mut PreparedGrid) -> usize {
        for a in 0..self.kw.len() {
            for phase in 0..3 {
                let kw = self.kw[a][phase] * (1.0 + 0.2 * self.uniform());
                self.kw[a][phase] = kw.clamp(250.0, 750.0);
            }
            grid.set_datacenter_kw(a, self.kw[a], 0.95);
        }
        let report = grid.flow.solve().expect("grid step converges");
        black_box(grid.flow.voltages_pu());
        report.iterations
    }
}

/// Mean, min and max of `count` iterations counts.
fn iteration_stats(mut next: impl FnMut() -> usize, count: usize) -> (f64, usize, usize) {
    let (mut total, mut min, mut max) = (0usize, usize::MAX, 0usize);
    for _ in 0..count {
        let it = next();
        total += it;
        min = min.min(it);
        max = max.max(it);
    }
    (total as f64 / count as f64, min, max)
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
        let mut k = 0u64;
        let (mean, min, max) = iteration_stats(
            || {
                k += 1;
                step(&mut grid, k)
            },
            1000,
        );
        let nodes = grid.flow.voltages().len();
        eprintln!(
            "grid_step/{id}: {nodes} nodes, {} datacenters, iterations per step mean {mean:.2} \
             (min {min}, max {max})",
            grid.attachments.len(),
        );
        g.bench_function(*id, |b| {
            b.iter(|| {
                k += 1;
                step(&mut grid, k)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("grid_step_walk");
    for (id, path, setup) in &feeders {
        let mut grid = PreparedGrid::open(path, setup).expect("feeder prepares");
        grid.flow.options.tolerance_pu = 1e-4;
        let mut walk = Walk::new(grid.attachments.len());
        for _ in 0..4 {
            walk.step(&mut grid);
        }
        let (mean, min, max) = iteration_stats(|| walk.step(&mut grid), 1000);
        eprintln!("grid_step_walk/{id}: iterations per step mean {mean:.2} (min {min}, max {max})");
        g.bench_function(*id, |b| b.iter(|| walk.step(&mut grid)));
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
