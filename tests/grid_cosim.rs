//! The grid inside a run: `simulate` with a `[grid]` on the IEEE 13-bus feeder — the tables and
//! metrics it writes (checked against a recomputation from the written voltages), the
//! controllers' known answers in a closed loop, and bad input refused before anything is
//! written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn feeder() -> Option<PathBuf> {
    common::shared("feeders").map(|f| f.join("ieee13/IEEE13Bus.dss"))
}

/// A scenario: one model on 2000 GPUs at bus 671, the given grid extras and controllers.
fn scenario(dir: &Path, feeder: &Path, grid_extra: &str, controllers: &str) -> PathBuf {
    let text = format!(
        r#"duration_s = 60
seed = 3
[datacenter]
name = "dc"
dt_s = "1/10"
gpus_per_server = 8
total_gpu_capacity = 4000
base_kw_per_phase = 300.0
[[models]]
label = "m"
gpus_per_replica = 1
initial_batch_size = 512
capacity_share = 1.0
power = {{ kind = "parametric", batch_sizes = [8, 16, 32, 64, 128, 256, 512], level_w = [300.0, 560.0], trace_s = 60.0, trace_dt_s = 0.1, seed = 1 }}
itl = {{ kind = "parametric", loc_s = 0.002, pi_steady = 0.9, sigma_steady = 0.15, sigma_stall = 0.5, scale_s = 0.012, per_log2_batch = 0.12, stall_factor = 3.0 }}
[grid]
feeder = "{}"
dt_s = "1/10"
source_pu = 1.0
datacenter_buses = {{ dc = "671" }}
exclude_buses = ["sourcebus", "650", "rg60"]
{grid_extra}
{controllers}
"#,
        feeder.display()
    );
    let p = dir.join("scenario.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn simulate(scenario: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_simulate"))
        .args([
            "--scenario",
            scenario.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn floats(path: &Path, column: &str) -> Vec<f64> {
    powersynth::table::ParquetTable::read(path)
        .unwrap()
        .floats(column)
        .unwrap()
}

fn integers(path: &Path, column: &str) -> Vec<i64> {
    powersynth::table::ParquetTable::read(path)
        .unwrap()
        .integers(column)
        .unwrap()
}

/// The written voltages give back the metrics: violation integral, time in violation, worst
/// voltages; tap positions are the setup's.
#[test]
fn grid_tables_and_metrics_agree() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(
        dir.path(),
        &feeder,
        "taps = { creg1a = 10, creg1b = 2, creg1c = 11 }",
        "[[controllers]]\nkind = \"noop\"\ndt_s = 1\n",
    );
    let out = dir.path().join("out");
    let o = simulate(&sc, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let grid = out.join("grid/part-0.parquet");
    let v = floats(&grid, "v_pu");
    let ticks = integers(&grid, "tick");
    // 600 grid steps × 32 monitored bus-phases (41 nodes less sourcebus, 650, rg60).
    assert_eq!(v.len(), 600 * 32);
    let mut integral = 0.0;
    let mut time = 0.0;
    for step in v.chunks(32) {
        let s: f64 = step
            .iter()
            .map(|x| (0.95 - x).max(0.0) + (x - 1.05).max(0.0))
            .sum();
        integral += s * 0.1;
        if s > 0.0 {
            time += 0.1;
        }
    }
    assert!(ticks.chunks(32).all(|w| w[0] == w[31]));
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("grid_metrics.json")).unwrap())
            .unwrap();
    let got = m["violation_integral_pu_s"].as_f64().unwrap();
    assert!(integral > 0.0, "the setup is meant to sag below 0.95 pu");
    assert!(
        (got - integral).abs() <= 1e-9 * integral.max(1.0),
        "{got} vs {integral}"
    );
    assert!((m["time_in_violation_s"].as_f64().unwrap() - time).abs() < 1e-6);
    let vmin = v.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(m["min_voltage_pu"].as_f64().unwrap(), vmin);
    assert_eq!(m["tap_operations"].as_u64().unwrap(), 0);
    let taps = floats(&out.join("taps/part-0.parquet"), "tap_pu");
    assert_eq!(taps[..3], [1.0625, 1.0125, 1.06875]);
}

/// A tap schedule fires at its tick: creg1a (by name) and phase b (shorthand for creg1b) move
/// at t = 2 s; the grid step after it (t = 2.1 s) solves with the new taps.
#[test]
fn tap_schedule_moves_taps_at_its_time() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(
        dir.path(),
        &feeder,
        "taps = { creg1a = 10, creg1b = 2, creg1c = 11 }",
        "[[controllers]]\nkind = \"tap-schedule\"\ndt_s = \"1/10\"\nchanges = [{ at_s = 2.0, taps = { creg1a = 1.1, b = 1.05 } }]\n",
    );
    let out = dir.path().join("out");
    let o = simulate(&sc, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let taps = out.join("taps/part-0.parquet");
    let t_s = floats(&taps, "t_s");
    let tap = floats(&taps, "tap_pu");
    // Rows: 3 regulators per grid step, in creg1a, creg1b, creg1c order.
    for (k, (t, row)) in t_s.chunks(3).zip(tap.chunks(3)).enumerate() {
        let want = if t[0] > 2.05 {
            [1.1, 1.05, 1.06875]
        } else {
            [1.0625, 1.0125, 1.06875]
        };
        assert_eq!(row, want, "grid step {k} at t = {} s", t[0]);
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("grid_metrics.json")).unwrap())
            .unwrap();
    // creg1a 10 → 16 steps, creg1b 2 → 8 steps.
    assert_eq!(m["tap_operations"].as_u64().unwrap(), 12);
}

/// Rule-based control on a sagging feeder: each batch change follows a step whose snapshot
/// had an under-voltage beyond the deadband, and lowers the batch.
#[test]
fn rule_based_lowers_the_batch_on_a_dip() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(
        dir.path(),
        &feeder,
        "taps = { creg1a = 10, creg1b = 2, creg1c = 11 }",
        "[[controllers]]\nkind = \"rule-based\"\ndt_s = 1\nstep_size = 10.0\n",
    );
    let out = dir.path().join("out");
    let o = simulate(&sc, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let batch = integers(&out.join("models/part-0.parquet"), "batch_size");
    assert_eq!(batch[0], 512);
    let lowered = batch.windows(2).filter(|w| w[1] < w[0]).count();
    let raised = batch.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(lowered >= 1, "the dip never lowered the batch: {batch:?}");
    assert_eq!(raised, 0, "no over-voltage here, so no increase");
    let v = floats(&out.join("grid/part-0.parquet"), "v_pu");
    let first_change = batch.windows(2).position(|w| w[1] != w[0]).unwrap() + 1;
    // The command was decided at the controller step (whole second) before it took effect.
    let decided_at = first_change - 1;
    assert_eq!(decided_at % 10, 0);
    let worst = v[decided_at * 32..(decided_at + 1) * 32]
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    assert!(
        0.95 - worst > 1e-4,
        "changed at a step without a dip: {worst}"
    );
}

/// Bad grid input is refused with the name and nothing is written.
#[test]
fn bad_grid_input_is_refused_before_writing() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("taps = { cregx = 1 }", "", "unknown regulator `cregx`"),
        ("exclude_buses = [\"nowhere\"]", "", "unknown bus `nowhere`"),
        (
            "",
            "[[controllers]]\nkind = \"ofo\"\ndt_s = 1\nitl_deadline_s = { m = 0.05 }\n[controllers.fits.x]\npower = { L = 1.0, x0 = 1.0, k = 1.0, b0 = 1.0 }\nlatency = { L = 1.0, x0 = 1.0, k = 1.0, b0 = 1.0 }\nthroughput = { L = 1.0, x0 = 1.0, k = 1.0, b0 = 1.0 }\n",
            "model \"x\" is not in [[models]]",
        ),
        ("source_pu = 0.2", "", "did not converge"),
    ];
    for (extra, controllers, want) in cases {
        // `exclude_buses` is given once by the template; a case that sets it replaces it.
        let sc = scenario(dir.path(), &feeder, "", controllers);
        let text = std::fs::read_to_string(&sc).unwrap();
        let text = if extra.starts_with("exclude_buses") {
            text.replace("exclude_buses = [\"sourcebus\", \"650\", \"rg60\"]", extra)
        } else if extra.starts_with("source_pu") {
            text.replace("source_pu = 1.0", extra)
        } else {
            text.replace("[grid]\n", &format!("[grid]\n{extra}\n"))
        };
        std::fs::write(&sc, text).unwrap();
        let out = dir.path().join("out-bad");
        let o = simulate(&sc, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra} {controllers}: succeeded");
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!out.exists(), "{extra}: wrote {}", out.display());
    }
}

/// A generator at 675 lifts the voltages (less violation) and an external load there lowers
/// them; a profile ramps linearly between its points.
#[test]
fn generators_and_external_loads_move_the_voltages() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let noop = "[[controllers]]\nkind = \"noop\"\ndt_s = 1\n";
    let taps = "taps = { creg1a = 10, creg1b = 2, creg1c = 11 }";
    let run = |extra: &str, name: &str| -> f64 {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let sc = scenario(&sub, &feeder, &format!("{taps}\n{extra}"), noop);
        let out = sub.join("out");
        let o = simulate(&sc, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("grid_metrics.json")).unwrap())
                .unwrap();
        m["violation_integral_pu_s"].as_f64().unwrap()
    };
    let base = run("", "base");
    let generator = run("[[grid.generators]]\nbus = \"675\"\nkw = 300.0\n", "gen");
    let load = run(
        "[[grid.loads]]\nbus = \"675\"\nprofile = [[0.0, 0.0], [60.0, 300.0]]\n",
        "load",
    );
    assert!(generator < base, "generator {generator} vs {base}");
    assert!(load > base, "load {load} vs {base}");
}

/// The shipped IEEE 13 set-ups run (30 s each) and rank as the controllers should: the OFO
/// and rule-based runs violate less than the uncontrolled baseline at batch 512.
#[test]
fn shipped_ieee13_scenarios_run_and_rank() {
    if feeder().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios");
    let mut integral = std::collections::HashMap::new();
    for name in ["ieee13-ofo", "ieee13-rule-based", "ieee13-baseline"] {
        let o = Command::new(env!("CARGO_BIN_EXE_simulate"))
            .args([
                "--scenario",
                root.join(format!("{name}.toml")).to_str().unwrap(),
            ])
            .args(["--duration-s", "120", "--no-output", "-q"])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let line: Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap())
                .unwrap();
        integral.insert(
            name,
            line["grid"]["violation_integral_pu_s"].as_f64().unwrap(),
        );
    }
    assert!(
        integral["ieee13-rule-based"] < integral["ieee13-baseline"],
        "{integral:?}"
    );
    assert!(
        integral["ieee13-ofo"] < integral["ieee13-baseline"],
        "{integral:?}"
    );
}

/// Storage droop in the loop: a 500 kVA battery at 675 answers the sag with kvar. Each kvar
/// the battery holds is recomputed from the written voltages: the droop of the lowest phase
/// at 675 over the grid states of the controller's last 1 s window (qv, v_ref 1, deadband
/// 0.005, gain 500 / 0.045, clamped to ±500). The battery idles (kW 0, SOC still) and the
/// violation integral falls against the run without it.
#[test]
fn storage_droop_answers_the_sag() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let taps = "taps = { creg1a = 10, creg1b = 2, creg1c = 11 }";
    let battery = "[[grid.storage]]\nname = \"bess\"\nbus = \"675\"\nrated_power_kw = 500.0\n\
                   capacity_kwh = 1000.0\n";
    let run = |extra: &str, controllers: &str, name: &str| -> PathBuf {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let sc = scenario(&sub, &feeder, &format!("{taps}\n{extra}"), controllers);
        let out = sub.join("out");
        let o = simulate(&sc, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let droop = "[[controllers]]\nkind = \"storage-droop\"\ndt_s = 1\n";
    let out = run(battery, droop, "droop");
    let base = run("", "[[controllers]]\nkind = \"noop\"\ndt_s = 1\n", "base");

    // Lowest phase at 675 per grid step, from grid/.
    let grid = powersynth::table::ParquetTable::read(&out.join("grid/part-0.parquet")).unwrap();
    let bus = grid.strings("bus").unwrap();
    let v = grid.floats("v_pu").unwrap();
    let t = grid.floats("t_s").unwrap();
    let mut v675: Vec<(f64, f64)> = Vec::new();
    for i in 0..v.len() {
        if bus[i].as_deref() != Some("675") {
            continue;
        }
        match v675.last_mut() {
            Some((tl, m)) if *tl == t[i] => *m = m.min(v[i]),
            _ => v675.push((t[i], v[i])),
        }
    }
    assert_eq!(v675.len(), 600);
    let storage = out.join("storage/part-0.parquet");
    let kvar = floats(&storage, "reactive_power_kvar");
    let kw = floats(&storage, "power_kw");
    let soc = floats(&storage, "soc");
    assert_eq!(kvar.len(), 600);
    let gain = 500.0 / (0.05 - 0.005);
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (step, held_kvar) in kvar.iter().enumerate().skip(1) {
        // The controller steps at whole seconds after the grid; its command holds from the
        // next grid step on. The window of the step at s seconds: grid steps (s−1, s].
        let s = (step - 1) / 10;
        let window: Vec<f64> = if s == 0 {
            vec![v675[0].1]
        } else {
            v675[(s - 1) * 10 + 1..=s * 10]
                .iter()
                .map(|x| x.1)
                .collect()
        };
        let vmin = window.iter().cloned().fold(f64::INFINITY, f64::min);
        let e = 1.0 - vmin;
        let want = if e.abs() <= 0.005 {
            0.0
        } else {
            (gain * (e.abs() - 0.005).copysign(e)).clamp(-500.0, 500.0)
        };
        // The terminal kvar is the dispatch inside the 0.9–1.1 pu band.
        worst = worst.max((held_kvar - want).abs());
        checked += 1;
    }
    assert_eq!(checked, 599);
    assert!(worst < 1e-3, "kvar off the droop by {worst} kvar");
    assert!(
        kvar.iter().any(|q| *q > 50.0),
        "the sag should call for kvar"
    );
    // Idle: the terminals draw nothing but (zero) idling losses; the SOC stays at 0.5.
    assert!(kw.iter().all(|p| p.abs() < 1e-9) && soc.iter().all(|s| *s == 0.5));
    let metric = |out: &Path| -> f64 {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("grid_metrics.json")).unwrap())
                .unwrap();
        m["violation_integral_pu_s"].as_f64().unwrap()
    };
    assert!(
        metric(&out) < metric(&base),
        "{} vs {}",
        metric(&out),
        metric(&base)
    );
}

/// Two sites on IEEE 13 (a at 671, which sags; b at 633) serving one model at its smallest
/// batch, and a load-shift controller every second: each shift moves 400 replicas from a to b
/// exactly when the latest grid state before the controller's step has 671 below 0.95 pu
/// (recomputed from the written voltages), the total is conserved, and the violation
/// integral falls against the same sites without the controller.
#[test]
fn load_shift_moves_replicas_off_the_sagging_site() {
    let Some(feeder) = feeder() else { return };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, controllers: &str| -> PathBuf {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let text = format!(
            r#"duration_s = 30
seed = 3
[datacenter]
dt_s = "1/10"
gpus_per_server = 8
total_gpu_capacity = 4000
base_kw_per_phase = 300.0
[[sites]]
name = "a"
replicas = {{ m = 3200 }}
[[sites]]
name = "b"
replicas = {{ m = 400 }}
base_kw_per_phase = 0.0
[[models]]
label = "m"
gpus_per_replica = 1
initial_batch_size = 8
replicas = 1
power = {{ kind = "parametric", batch_sizes = [8, 16, 32, 64, 128, 256, 512], level_w = [300.0, 560.0], trace_s = 60.0, trace_dt_s = 0.1, seed = 1 }}
[grid]
feeder = "{}"
dt_s = "1/10"
source_pu = 1.0
taps = {{ creg1a = 4, creg1b = 0, creg1c = 4 }}
datacenter_buses = {{ a = "671", b = "633" }}
exclude_buses = ["sourcebus", "650", "rg60"]
{controllers}
"#,
            feeder.display()
        );
        let sc = sub.join("scenario.toml");
        std::fs::write(&sc, text).unwrap();
        let out = sub.join("out");
        let o = simulate(&sc, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let shift = "[[controllers]]\nkind = \"load-shift\"\ndt_s = 1\ngpus_per_shift = 400\n";
    let out = write("shift", shift);
    let base = write("base", "[[controllers]]\nkind = \"noop\"\ndt_s = 1\n");

    // 671's lowest phase per grid step.
    let grid = powersynth::table::ParquetTable::read(&out.join("grid/part-0.parquet")).unwrap();
    let (bus, v) = (grid.strings("bus").unwrap(), grid.floats("v_pu").unwrap());
    let ticks = grid.integers("tick").unwrap();
    let mut v671: std::collections::BTreeMap<i64, f64> = Default::default();
    for i in 0..v.len() {
        if bus[i].as_deref() == Some("671") {
            let e = v671.entry(ticks[i]).or_insert(f64::INFINITY);
            *e = e.min(v[i]);
        }
    }
    // Replicas per site per datacenter step.
    let models = powersynth::table::ParquetTable::read(&out.join("models/part-0.parquet")).unwrap();
    let (dc, mt) = (
        models.strings("datacenter").unwrap(),
        models.integers("tick").unwrap(),
    );
    let replicas = models.integers("active_replicas").unwrap();
    let at = |site: &str, tick: i64| -> i64 {
        (0..dc.len())
            .find(|&i| dc[i].as_deref() == Some(site) && mt[i] == tick)
            .map(|i| replicas[i])
            .unwrap()
    };
    let mut shifts = 0;
    for second in 0..29i64 {
        // The controller steps at tick 10·s after the grid; its command shows at tick 10·s+1.
        let tick = second * 10;
        let sagging = v671[&tick] < 0.95;
        let moved = at("a", tick + 1) - at("a", tick);
        assert_eq!(at("a", tick + 1) + at("b", tick + 1), 3600);
        let can = at("a", tick) >= 400 && 4000 - at("b", tick) >= 400;
        let want = if sagging && can { -400 } else { 0 };
        assert_eq!(moved, want, "second {second}: 671 at {} pu", v671[&tick]);
        shifts += (moved != 0) as usize;
    }
    assert!(shifts >= 1, "the setup is meant to sag at 671");
    let metric = |out: &Path| -> f64 {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("grid_metrics.json")).unwrap())
                .unwrap();
        m["violation_integral_pu_s"].as_f64().unwrap()
    };
    assert!(
        metric(&out) < metric(&base),
        "{} vs {}",
        metric(&out),
        metric(&base)
    );
}
