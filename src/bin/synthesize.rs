//! `synthesize`: power of one replica for a request log that was never measured.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use powersynth::engine::ServingConfig;
use powersynth::learn::{learn, LearnOptions, LearnedModel};
use powersynth::report::write_power_series;
use powersynth::sources::measured::load_run;
use powersynth::sources::measured::read_request_log;
use powersynth::store::write_json;
use powersynth::synth::synthesize;
use powersynth::workload::{SessionModel, Workload};
use rand::SeedableRng;
use rand_pcg::Pcg64;

/// Synthesize the power of one serving replica (its TP GPUs) for a request log.
///
/// Learns the engine timing and the per-state power model from the training runs (measured
/// runs of the same model × GPU × TP), simulates continuous batching of the requests with the
/// serving settings (with a prefix cache when they enable it), and draws power for each bin.
/// Only the request log's arrival times, token counts, sessions and declared prefixes are
/// read (docs/requests.md): nothing measured about the target run is used.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Measured run folders to learn from (each with manifest.json, power.csv, engine.csv and a
    /// request log), all of one model × GPU × TP.
    #[arg(long, num_args = 1.., required_unless_present = "model", conflicts_with = "model")]
    train: Vec<PathBuf>,
    /// A learned model written earlier by --model-out, used instead of learning from --train.
    #[arg(long)]
    model: Option<PathBuf>,
    /// SERVING.json: model, hardware, tp, max_num_seqs, max_num_batched_tokens,
    /// enable_chunked_prefill, enable_prefix_caching.
    #[arg(long)]
    serving: PathBuf,
    /// REQUESTS.json with request_timestamps (unix s), input_lens and output_lens, and
    /// optionally session_ids, turn_idx, prefix_tokens (multi-turn sessions and the prefix
    /// cache); any order of requests. Every column in docs/requests.md.
    #[arg(long)]
    requests: PathBuf,
    /// Start of the output (unix s); row i is at t0 + i·dt.
    #[arg(long)]
    t0: f64,
    /// Length of the output (s).
    #[arg(long)]
    duration_s: f64,
    /// Output step (s): a whole multiple of the learning step (0.25 s).
    #[arg(long, default_value_t = 0.25)]
    dt_s: f64,
    /// Seed of the power draws (same inputs and seed → identical output bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file: .csv or .parquet with columns t_s, power_w (W, total over the replica).
    #[arg(long)]
    out: PathBuf,
    /// Also write the learned model (JSON) here.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Instead of replaying --requests as logged, learn its sessions (session_ids: turns,
    /// prompt growth, think times from post_gap_s or the logged latencies) and generate
    /// closed-loop traffic from this many clients over the output window: each client sends a
    /// turn, waits for the simulated answer, thinks, sends the next; sessions drawn with
    /// --seed.
    #[arg(long)]
    closed_loop_clients: Option<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let serving = ServingConfig::from_file(&args.serving)?;
    let workload = match args.closed_loop_clients {
        None => Workload::from_request_log(&args.requests)?,
        Some(clients) => {
            let log = read_request_log(&args.requests)?;
            let sessions = SessionModel::from_log(&log)?;
            let mut rng = Pcg64::seed_from_u64(args.seed);
            let w = sessions.closed_loop(clients, args.t0, args.duration_s, &mut rng)?;
            eprintln!(
                "closed loop: {clients} clients replaying {} sessions of {}",
                sessions.sessions.len(),
                args.requests.display()
            );
            w
        }
    };
    let model = match &args.model {
        Some(p) => LearnedModel::read_json(p)?,
        None => {
            let runs = args
                .train
                .iter()
                .map(|d| {
                    load_run(d).with_context(|| format!("loading training run {}", d.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            learn(&runs, &LearnOptions::default())?
        }
    };
    let (series, _) = synthesize(
        &model,
        &serving,
        &workload,
        args.t0,
        args.duration_s,
        args.dt_s,
        args.seed,
    )?;
    write_power_series(&args.out, series.t0_s, series.dt_s, &series.power_w)?;
    if let Some(p) = &args.model_out {
        write_json(p, &model)?;
    }
    let mean_w = series.power_w.iter().sum::<f64>() / series.power_w.len() as f64;
    eprintln!(
        "{}: {} bins of {} s, mean {:.1} W, energy {:.3} kWh → {}",
        model.configuration,
        series.power_w.len(),
        series.dt_s,
        mean_w,
        mean_w * series.power_w.len() as f64 * series.dt_s / 3.6e6,
        args.out.display()
    );
    Ok(())
}
