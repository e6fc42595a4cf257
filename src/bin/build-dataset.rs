//! `build-dataset`: runs a pipeline file (default `pipelines/default.toml`) into an output
//! folder. Only parses flags, draws progress and prints the summary; the work is in the library.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use powersynth::pipeline::{self, PipelineConfig, RunOptions};
use powersynth::progress::Progress;

/// Build powersynth's dataset: pull benchmark data, fit power/latency/throughput curves and ITL
/// mixtures, build traces and templates, and write them with a provenance manifest.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Pipeline file (TOML). `pipelines/default.toml` runs on the fitted parameters embedded in
    /// `data/` and needs no network; `pipelines/leaderboard.toml` fits the ML.ENERGY leaderboard
    /// in ../shared; `pipelines/mlenergy-hub.toml` pulls the gated Hub dataset (needs HF_TOKEN).
    #[arg(long, default_value = "pipelines/default.toml")]
    pipeline: PathBuf,
    /// Output folder (created if missing). Spec folders already there and built from the same
    /// inputs are reused, not refitted.
    #[arg(long, default_value = "out/default")]
    out: PathBuf,
    /// Seed for every random choice (ITL subsampling); overrides the pipeline's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Refit every group even when its spec folder is current.
    #[arg(long)]
    force: bool,
    /// Replace the pipeline source's `path` (leaderboard folder, embedded file or Hub mirror).
    #[arg(long)]
    source_path: Option<PathBuf>,
    /// Replace the pipeline's `measured.path` (folder of measured runs).
    #[arg(long)]
    measured_path: Option<PathBuf>,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Run shard I of N of the pipeline's model groups (0 ≤ I < N; a Slurm array or
    /// Kubernetes completion index): contiguous groups in source order, fitted into the common
    /// spec store of --out; tables in `shard=I` partitions; the last shard also runs the
    /// measured stage. Then `--merge-shards` with the same pipeline and --out.
    #[arg(long, value_name = "I/N", conflicts_with = "merge_shards")]
    shard: Option<powersynth::shard::Shard>,
    /// Merge the shards in --out (all of `--shard 0/N` … `N-1/N` of the same pipeline) into
    /// what the unsplit run writes, and remove the partitions.
    #[arg(long)]
    merge_shards: bool,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

/// Progress bars on stderr, one per stage.
struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, stage: &str, total: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total).with_message(stage.to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        *self.bar.lock().expect("progress lock") = Some(bar);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            b.inc(n);
        }
    }
    fn end(&self, summary: &str) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
        tracing::info!("{summary}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    let mut cfg = PipelineConfig::from_file(&args.pipeline)
        .with_context(|| format!("loading pipeline {}", args.pipeline.display()))?;
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    let bars = Bars {
        quiet: args.log.quiet,
        bar: Mutex::new(None),
    };
    let started = Instant::now();
    let staged = stage_output(&args)?;
    let opts = RunOptions {
        out_dir: staged
            .as_ref()
            .map_or_else(|| args.out.clone(), |s| s.path().to_path_buf()),
        force: args.force,
        source_path: args.source_path.clone(),
        measured_path: args.measured_path.clone(),
        pipeline_file: Some(args.pipeline.clone()),
        progress: &bars,
        shard: args.shard.unwrap_or_default(),
    };
    let summary = if args.merge_shards {
        pipeline::shards::merge(&cfg, &opts)
            .with_context(|| format!("merging the shards in {}", args.out.display()))?
    } else {
        pipeline::run(&cfg, &opts).with_context(|| format!("running pipeline {:?}", cfg.name))?
    };
    if let Some(staged) = staged {
        staged
            .commit()
            .with_context(|| format!("moving the result into {}", args.out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    print_summary(&summary, &args.out, started);
    Ok(())
}

/// A whole run builds its folder beside --out (the previous result hard-linked in, so its
/// spec cache is reused) and renames it into place at the end: killed or failed, it leaves
/// --out as it was. Shards and their merge share one --out across processes and write in
/// place (`None`).
fn stage_output(args: &Args) -> anyhow::Result<Option<powersynth::io::StagedDir>> {
    if args.shard.is_some() || args.merge_shards {
        return Ok(None);
    }
    let staged =
        powersynth::io::StagedDir::begin_with(&args.out, &["manifest.json", "specs"], true)
            .with_context(|| format!("preparing {}", args.out.display()))?;
    Ok(Some(staged))
}

/// The text summary: groups, ITL fit quality, fit warnings, outputs written.
fn print_summary(summary: &pipeline::Summary, out: &Path, started: Instant) {
    println!("pipeline {} from {}", summary.pipeline, summary.source);
    println!(
        "groups: {} ({} built, {} reused from the spec cache); logistic refinement strictly better than the grid on {}/{} groups with ≥ 3 batch sizes",
        summary.groups,
        summary.groups_built,
        summary.groups_loaded,
        summary.refined_strictly_better.0,
        summary.refined_strictly_better.1
    );
    print_itl_quality(summary);
    print_warnings(&summary.warnings);
    println!("wrote to {}:", out.display());
    for (f, rows) in &summary.outputs {
        println!("  {f} ({rows} rows)");
    }
    println!(
        "  manifest.json; done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The measured runs' ITL fits against their samples (nothing without measured runs).
fn print_itl_quality(summary: &pipeline::Summary) {
    if summary.measured_runs == 0 {
        return;
    }
    println!("measured runs: {}", summary.measured_runs);
    for q in &summary.itl_quality {
        println!(
            "  ITL fit {:<11} {}: n={} mean {:.2} ms vs sample {:.2} ms (err {:.1} %), p50/p90/p99 err {:.1}/{:.1}/{:.1} %",
            q.mode,
            q.run_id,
            q.quality.n_samples,
            q.quality.fit_mean_s * 1e3,
            q.quality.sample_mean_s * 1e3,
            q.quality.mean_err_pct,
            q.quality.p50_err_pct,
            q.quality.p90_err_pct,
            q.quality.p99_err_pct
        );
    }
}

/// The first five fit warnings and how many more there are.
fn print_warnings(warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    println!(
        "{} fit warnings (suspicious fits; see the `warnings` column):",
        warnings.len()
    );
    for w in warnings.iter().take(5) {
        println!("  {w}");
    }
    if warnings.len() > 5 {
        println!("  … {} more", warnings.len() - 5);
    }
}
