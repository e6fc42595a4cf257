//! `powerflow`: one three-phase power flow on an OpenDSS feeder with datacenter loads.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

use powersynth::grid::setup::{GridSetup, PreparedGrid};

/// Solve one unbalanced three-phase power flow on a distribution feeder (OpenDSS file) and
/// print every node's voltage.
///
/// The feeder is read natively (the OpenDSS subset of the IEEE 13/34/123 test feeders). Each
/// --load bus gets one single-phase wye constant-PQ load per phase (kV = the bus's
/// line-to-neutral base), as the peer attaches a datacenter; regulators not given a --tap keep
/// the tap the script's own `Solve` chose (OpenDSS's static regulator control), or 1.0 when the
/// script does not solve. Voltages are in per unit of each bus's base (`Set VoltageBases`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The feeder's OpenDSS script (files it redirects to are read from beside it).
    #[arg(long)]
    feeder: PathBuf,
    /// The source's per-unit voltage (default: the script's).
    #[arg(long)]
    source_pu: Option<f64>,
    /// A regulator's tap in steps of 0.00625 from 1.0, as REG=STEPS (RegControl name, e.g.
    /// creg1a=14). Repeat for several regulators.
    #[arg(long = "tap", value_name = "REG=STEPS")]
    taps: Vec<String>,
    /// A datacenter load: BUS=KW_PER_PHASE (kW on each of the bus's three phases). Repeat for
    /// several buses.
    #[arg(long = "load", value_name = "BUS=KW_PER_PHASE")]
    loads: Vec<String>,
    /// Power factor of the datacenter loads (lagging; kvar = kW·tan(acos(pf))).
    #[arg(long, default_value_t = 0.95)]
    pf: f64,
    /// Stop when no node voltage changes by more than this between iterations (pu). OpenDSS
    /// uses 1e-4.
    #[arg(long, default_value_t = 1e-6)]
    tolerance_pu: f64,
    /// Print a table and then, as the last line of stdout, one JSON object
    /// {"converged", "iterations", "nodes": {"bus.phase": v_pu}} with every node.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    log: powersynth::cli::LogArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init();
    if !(args.pf > 0.0 && args.pf <= 1.0) {
        bail!("--pf {} must be in (0, 1]", args.pf);
    }
    if !(args.tolerance_pu > 0.0 && args.tolerance_pu < 0.1) {
        bail!("--tolerance-pu {} must be in (0, 0.1)", args.tolerance_pu);
    }
    let taps = args
        .taps
        .iter()
        .map(|t| parse_pair(t, "--tap", "REG=STEPS"))
        .map(|r| {
            r.and_then(|(reg, steps)| {
                let s: i32 = steps.parse().with_context(|| {
                    format!("--tap {reg}={steps}: STEPS must be a whole number")
                })?;
                if s.abs() > 16 {
                    bail!("--tap {reg}={steps}: a regulator has 16 steps each way");
                }
                Ok((reg, s))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut loads = Vec::new();
    for l in &args.loads {
        let (bus, kw) = parse_pair(l, "--load", "BUS=KW_PER_PHASE")?;
        let kw: f64 = kw
            .parse()
            .ok()
            .filter(|k: &f64| k.is_finite() && *k >= 0.0 && *k <= 1e6)
            .with_context(|| format!("--load {l}: KW_PER_PHASE must be a number in [0, 1e6]"))?;
        loads.push((bus, kw));
    }
    let setup = GridSetup {
        source_pu: args.source_pu,
        taps,
        datacenter_buses: loads.iter().map(|(b, _)| b.clone()).collect(),
    };
    let mut grid = PreparedGrid::open(&args.feeder, &setup).map_err(|e| match e {
        powersynth::grid::GridError::UnknownBus { .. } => anyhow::anyhow!("--load: {e}"),
        e => anyhow::anyhow!(e),
    })?;
    for (k, (_, kw)) in loads.iter().enumerate() {
        grid.set_datacenter_kw(k, [*kw; 3], args.pf);
    }
    grid.flow.options.tolerance_pu = args.tolerance_pu;
    let report = grid.flow.solve()?;
    print_voltages(&grid, report, args.json)
}

fn parse_pair(text: &str, flag: &str, form: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
            Ok((a.trim().to_ascii_lowercase(), b.trim().to_string()))
        }
        _ => bail!("{flag} {text}: expected {form}"),
    }
}

fn print_voltages(
    grid: &PreparedGrid,
    report: powersynth::grid::powerflow::SolveReport,
    json: bool,
) -> Result<()> {
    use std::io::Write;
    let net = grid.flow.network();
    let v_pu = grid.flow.voltages_pu();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "{}: converged in {} iterations ({} nodes)",
        grid.feeder.name,
        report.iterations,
        net.nodes.len()
    )?;
    writeln!(out, "{:<14} {:>10} {:>12}", "node", "v_pu", "v_kv")?;
    for (node, (pu, v)) in net.nodes.iter().zip(v_pu.iter().zip(grid.flow.voltages())) {
        writeln!(
            out,
            "{:<14} {:>10.6} {:>12.4}",
            node.to_string(),
            pu,
            v.norm() / 1000.0
        )?;
    }
    if json {
        let nodes: serde_json::Map<String, serde_json::Value> = net
            .nodes
            .iter()
            .zip(&v_pu)
            .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
            .collect();
        let obj = serde_json::json!({
            "converged": report.converged,
            "iterations": report.iterations,
            "nodes": nodes,
        });
        writeln!(out, "{obj}")?;
    }
    Ok(())
}
