//! `simulate`: run a datacenter scenario through the embedded coordinator.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use powersynth::coordinator::clock::to_f64;
use powersynth::coordinator::grid_metrics::GridMetrics;
use powersynth::coordinator::sink::{ParquetRunWriter, PerSecond, StatsSink};
use powersynth::coordinator::{RunCounts, RunSink};
use powersynth::io::StagedDir;
use powersynth::scenario::{build, Built, Overrides, Scenario};
use powersynth::shard::Shard;

/// Simulate a datacenter scenario (models, templates or synthesized power, server pool,
/// replica schedules, training overlay, controllers) with the embedded coordinator.
///
/// Prints one final JSON line on stdout: dc_steps, ticks, wall_s, dc_steps_per_s,
/// mean_facility_power_kw, min/max, GPUs used, servers. Writes the run result (per-step
/// datacenter states, commands, events, facility power at 1 s / 1 min / 15 min and facility
/// metrics, all described in docs/outputs.md) to the output folder, streamed in row groups:
/// memory does not grow with the run.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Scenario file (TOML, see docs/coordinator.md; example: benches/scenarios/openg2g-parity.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// Override the datacenter's GPU capacity (total_gpu_capacity); capacity_share models scale with it.
    #[arg(long)]
    gpus: Option<u64>,
    /// Override the simulated duration (s); must be a whole number of ticks.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Override the scenario's seed (same scenario and seed → bit-identical results).
    #[arg(long)]
    seed: Option<u64>,
    /// Run result folder (overrides the scenario's outputs.dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not write a run result (only the final JSON line): for timing and sweeps.
    #[arg(long)]
    no_output: bool,
    /// Simulate shard I of N (0 ≤ I < N; e.g. a Slurm array or Kubernetes completion index):
    /// whole racks (or servers, without a rack layout) split evenly in index order. The tables
    /// go to `shard=I` partitions of the output folder; `merge-shards DIR --out OUT` then
    /// writes what the unsplit run writes (equal within float summation order, same seed).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init();
    let sc = Scenario::from_file(&args.scenario)?;
    let base = args
        .scenario
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let ov = Overrides {
        gpus: args.gpus,
        duration_s: args.duration_s,
        seed: args.seed,
        shard: args.shard,
    };
    let shard = args.shard.unwrap_or_default();
    let out_dir = output_dir(&args, &sc, &base)?;
    let t_build = Instant::now();
    let mut built =
        build(&sc, &base, &ov).with_context(|| format!("building {}", args.scenario.display()))?;
    let build_s = t_build.elapsed().as_secs_f64();
    let run_key = ov.run_key(&args.scenario)?;
    let staged = stage_output(out_dir.as_deref(), shard)?;
    let write_dir = staged
        .as_ref()
        .map(|s| s.path().to_path_buf())
        .or_else(|| out_dir.clone());
    let mut writer = write_dir.as_ref().map(|d| {
        let rack_window_s = sc.outputs.rack_window_s.unwrap_or(60.0);
        run_writer(d, rack_window_s, shard, &run_key, &built)
    });
    let run = run_with_stats(&mut built, writer.as_mut(), args.log.quiet)?;
    if let Some(dir) = write_dir.as_ref().filter(|_| shard.is_whole()) {
        write_report(dir, &args.scenario, &run.per_second)?;
    }
    drop(writer);
    if let Some(s) = staged {
        s.commit()?;
    }
    println!("{}", summary_line(&args, &built, &run, build_s, out_dir));
    Ok(())
}

/// An unsplit run is built in a staging folder beside --out and renamed onto it at the end
/// (a failed or interrupted run leaves --out as it was); a shard writes its partitions in
/// place, each file atomic.
fn stage_output(out_dir: Option<&Path>, shard: Shard) -> Result<Option<StagedDir>> {
    Ok(match out_dir {
        Some(d) if shard.is_whole() => Some(StagedDir::begin(d, "facility_metrics.json")?),
        _ => None,
    })
}

/// The streaming writer of the run result into `dir`.
fn run_writer(
    dir: &Path,
    rack_window_s: f64,
    shard: Shard,
    run_key: &str,
    built: &Built,
) -> ParquetRunWriter {
    let w = ParquetRunWriter::new(dir)
        .with_rack_window_s(rack_window_s)
        .with_shard(shard, run_key);
    match &built.grid {
        Some(spec) => w.with_grid(spec.clone()),
        None => w,
    }
}

/// What a run leaves for the report and the final line.
struct RunStats {
    counts: RunCounts,
    wall_s: f64,
    mean_kw: f64,
    min_kw: f64,
    max_kw: f64,
    per_second: PerSecond,
    grid_metrics: Option<GridMetrics>,
}

/// Runs the coordinator into `writer` (if any) through a [`StatsSink`], with the progress bar.
fn run_with_stats(
    built: &mut Built,
    writer: Option<&mut ParquetRunWriter>,
    quiet: bool,
) -> Result<RunStats> {
    let ticks = built.coordinator.total_ticks();
    let bar = progress_bar(ticks, quiet);
    let every = (ticks / 200).max(1);
    let mut stats = StatsSink::new(writer.map(|w| w as &mut dyn RunSink), every, |t| {
        bar.set_position(t)
    });
    if let Some(spec) = &built.grid {
        stats = stats.with_grid(spec.clone());
    }
    let t0 = Instant::now();
    let counts = built.coordinator.run(&mut stats)?;
    let wall_s = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(RunStats {
        counts,
        wall_s,
        mean_kw: stats.mean_facility_power_w() / 1000.0,
        min_kw: stats.facility_min_w / 1000.0,
        max_kw: stats.facility_max_w / 1000.0,
        per_second: std::mem::take(&mut stats.per_second),
        grid_metrics: stats.grid.as_ref().map(|g| g.metrics()),
    })
}

/// The final JSON line on stdout.
fn summary_line(
    args: &Args,
    built: &Built,
    run: &RunStats,
    build_s: f64,
    out_dir: Option<PathBuf>,
) -> serde_json::Value {
    let counts = &run.counts;
    serde_json::json!({
        "dc_steps": counts.dc_steps,
        "ticks": counts.ticks,
        "wall_s": run.wall_s,
        "dc_steps_per_s": counts.dc_steps as f64 / run.wall_s,
        "mean_facility_power_kw": run.mean_kw,
        "min_facility_power_kw": run.min_kw,
        "max_facility_power_kw": run.max_kw,
        "gpus_used": built.gpus_used,
        "servers": built.servers,
        "duration_s": to_f64(built.duration),
        "dt_s": to_f64(built.dc_dt),
        "build_s": build_s,
        "commands": counts.commands,
        "events": counts.events,
        "out": out_dir.map(|d| d.display().to_string()),
        "shard": args.shard.map(|s| s.to_string()),
        "grid": run.grid_metrics,
    })
}

/// The tick progress bar on stderr (hidden with -q).
fn progress_bar(ticks: u64, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ticks)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} ticks ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar
}

/// `report.html` of an unsplit run from its per-second series.
fn write_report(dir: &Path, scenario: &Path, per_second: &PerSecond) -> Result<()> {
    let html = powersynth::report::simulation_report(
        &format!("powersynth simulation: {}", scenario.display()),
        &per_second.facility_w,
        [
            &per_second.phase_w[0],
            &per_second.phase_w[1],
            &per_second.phase_w[2],
        ],
    );
    powersynth::report::write_html(&dir.join("report.html"), &html)?;
    Ok(())
}

/// The run result folder: --out, else the scenario's outputs.dir (relative to it), none with
/// --no-output. A shard needs one (merge-shards reads it).
fn output_dir(args: &Args, sc: &Scenario, base: &Path) -> Result<Option<PathBuf>> {
    let dir = match (&args.out, &sc.outputs.dir) {
        _ if args.no_output => None,
        (Some(o), _) => Some(o.clone()),
        (None, Some(d)) => Some(base.join(d)),
        (None, None) => None,
    };
    if let (Some(shard), None) = (args.shard.filter(|s| !s.is_whole()), &dir) {
        anyhow::bail!(
            "--shard {shard} needs an output folder (--out DIR or outputs.dir) for merge-shards to read"
        );
    }
    Ok(dir)
}
