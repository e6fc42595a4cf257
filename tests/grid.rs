//! The grid against OpenDSS: node voltages of the IEEE 13/34/123 feeders at the peer's grid
//! start, compared with golden fixtures made by `tests/fixtures/grid/make_golden.py`
//! (opendssdirect.py 0.9.4, DSS C-API 0.14.5).

mod common;

use std::path::PathBuf;

use powersynth::grid::setup::{GridSetup, PreparedGrid};
use serde_json::Value;

fn feeders() -> Option<PathBuf> {
    common::shared("feeders")
}

fn fixture(name: &str) -> Value {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/grid/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Worst |V_rust − V_opendss| (pu) over every node of each case, per feeder.
fn compare(feeder: &str, dss: &str) -> Vec<(String, f64, String)> {
    let Some(feeders) = feeders() else {
        return Vec::new();
    };
    let fx = fixture(feeder);
    let mut out = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap().to_string();
        let dc_buses: Vec<String> = case["dc_buses"]
            .as_array()
            .map(|a| a.iter().map(|b| b.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let taps: Vec<(String, i32)> = case["taps"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap() as i32))
                    .collect()
            })
            .unwrap_or_default();
        let setup = GridSetup {
            source_pu: case["source_pu"].as_f64(),
            taps,
            datacenter_buses: dc_buses.clone(),
        };
        let mut grid = PreparedGrid::open(&feeders.join(feeder).join(dss), &setup).unwrap();
        let kw = case["kw_per_phase"].as_f64().unwrap_or(0.0);
        let pf = case["pf"].as_f64().unwrap_or(0.95);
        for a in 0..grid.attachments.len() {
            grid.set_datacenter_kw(a, [kw; 3], pf);
        }
        grid.flow.options.tolerance_pu = 1e-9;
        grid.flow.solve().unwrap();
        let v = grid.flow.voltages_pu();
        let nodes = &grid.flow.network().nodes;
        let mut worst = (0.0, String::new());
        let expected = case["nodes"].as_object().unwrap();
        for (node, want) in expected {
            let (bus, phase) = node.rsplit_once('.').unwrap();
            let i = grid
                .flow
                .network()
                .node(bus, phase.parse().unwrap())
                .unwrap_or_else(|| panic!("{feeder}/{name}: node {node} missing"));
            let d = (v[i] - want.as_f64().unwrap()).abs();
            if d > worst.0 {
                worst = (d, node.clone());
            }
        }
        assert_eq!(expected.len(), nodes.len(), "{feeder}/{name}: node count");
        // OpenDSS stops at 1e-4; its own distance to the exact solution is recorded per case.
        let opendss_own = case["tight_max_abs_diff"].as_f64().unwrap();
        assert!(
            worst.0 <= 1e-4 && worst.0 <= opendss_own + 5e-6,
            "{feeder}/{name}: worst {:.3e} pu at {} (OpenDSS's own convergence error {opendss_own:.3e})",
            worst.0,
            worst.1
        );
        out.push((name, worst.0, worst.1));
    }
    out
}

#[test]
fn ieee13_matches_opendss() {
    for (name, d, node) in compare("ieee13", "IEEE13Bus.dss") {
        println!("ieee13 {name}: worst {d:.2e} pu at {node}");
    }
}

#[test]
fn ieee34_matches_opendss() {
    for (name, d, node) in compare("ieee34", "IEEE34Bus.dss") {
        println!("ieee34 {name}: worst {d:.2e} pu at {node}");
    }
}

#[test]
fn ieee123_matches_opendss() {
    for (name, d, node) in compare("ieee123", "IEEE123Bus.dss") {
        println!("ieee123 {name}: worst {d:.2e} pu at {node}");
    }
}

/// The 13-bus script ends with `Solve` (regulator control on): OpenDSS picks taps 5/5/6 there
/// (read back from OpenDSS by make_golden.py's author); regulators no setup names keep them.
#[test]
fn ieee13_script_solve_picks_opendss_taps() {
    let Some(feeders) = feeders() else { return };
    let grid =
        PreparedGrid::open(&feeders.join("ieee13/IEEE13Bus.dss"), &GridSetup::default()).unwrap();
    let steps: Vec<i64> = ["reg1a", "reg1b", "reg1c"]
        .iter()
        .map(|t| ((grid.flow.network().tap(t).unwrap() - 1.0) / 0.00625).round() as i64)
        .collect();
    assert_eq!(steps, vec![5, 5, 6]);
}

fn powerflow(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_powerflow"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// `powerflow --json` on the 13-bus grid start at 500 kW/phase: every node within 1e-4 pu of
/// OpenDSS, names as OpenDSS writes them.
#[test]
fn powerflow_command_json_matches_opendss() {
    let Some(feeders) = feeders() else { return };
    let feeder = feeders.join("ieee13/IEEE13Bus.dss");
    let out = powerflow(&[
        "--feeder",
        feeder.to_str().unwrap(),
        "--source-pu",
        "1.0",
        "--tap",
        "creg1a=14",
        "--tap",
        "creg1b=6",
        "--tap",
        "CREG1C=15",
        "--load",
        "671=500",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["converged"], Value::Bool(true));
    let fx = fixture("ieee13");
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "grid_start_kw500")
        .unwrap();
    let want = case["nodes"].as_object().unwrap();
    let got = last["nodes"].as_object().unwrap();
    assert_eq!(want.len(), got.len());
    for (node, v) in want {
        let d = (got[node].as_f64().unwrap() - v.as_f64().unwrap()).abs();
        assert!(d < 1e-4, "{node}: {d}");
    }
}

/// Bad input: each error names what is wrong and where; nothing is printed on stdout.
#[test]
fn powerflow_command_bad_input() {
    let Some(feeders) = feeders() else { return };
    let feeder = feeders.join("ieee13/IEEE13Bus.dss");
    let f = feeder.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--load", "999=5"], "unknown bus `999`"),
        (vec!["--load", "671"], "expected BUS=KW_PER_PHASE"),
        (vec!["--load", "671=-3"], "KW_PER_PHASE must be a number"),
        (vec!["--tap", "xreg=3"], "unknown regulator `xreg`"),
        (vec!["--tap", "creg1a=1.5"], "STEPS must be a whole number"),
        (vec!["--load", "611=10"], "has no phase 1"),
        (vec!["--load", "671=500000"], "did not converge"),
        (vec!["--pf", "0"], "must be in (0, 1]"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--feeder", f];
        args.extend(extra.iter());
        let out = powerflow(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?} printed on stdout");
    }
}

/// Malformed feeder files: the error names the file, the line and the token.
#[test]
fn malformed_feeder_lines_name_file_line_token() {
    let dir = tempfile::tempdir().unwrap();
    let head = "Clear\nNew Circuit.t basekv=4.16 bus1=s\n";
    let cases = [
        (
            "New Line.l1 bus1=s bus2=b length=abc\n",
            3,
            "abc",
            "is not a number",
        ),
        (
            "New Line.l1 bus1=s bus2=b rmatrix=(1 2\n",
            3,
            "(1 2",
            "never closed",
        ),
        (
            "New Frobnicator.x bus1=s\n",
            3,
            "frobnicator",
            "unsupported element class",
        ),
        (
            "New Line.l1 bus1=s bus2=b wibble=3\n",
            3,
            "wibble",
            "unsupported property of Line",
        ),
        (
            "New Load.x bus1=s model=3\n",
            3,
            "3",
            "unsupported load model",
        ),
        ("Plot circuit\nFrob all\n", 4, "frob", "unsupported command"),
        ("New Transformer.t windings=3\n", 3, "3", "two-winding"),
        ("New Line.l1 bus1=s.x bus2=b\n", 3, "s.x", "whole numbers"),
        (
            "Set tolerance=1\n~ length=3\n",
            4,
            "~",
            "must follow a New or Edit",
        ),
        (
            "Edit Line.nothere length=2\n",
            3,
            "line.nothere",
            "not defined",
        ),
    ];
    for (body, line, token, what) in cases {
        let p = dir.path().join("f.dss");
        std::fs::write(&p, format!("{head}{body}Set VoltageBases=[4.16]\n")).unwrap();
        let e = powersynth::grid::feeder::Feeder::read(&p)
            .unwrap_err()
            .to_string();
        let expect = format!("f.dss, line {line}: `{token}`");
        assert!(e.contains(&expect) && e.contains(what), "{body:?}: {e}");
    }
}

/// Analytic H (linearised at the solution, factorised Y reused) against the peer's 100 kW
/// perturbation on every feeder at its grid start, 500 kW per phase.
#[test]
fn analytic_sensitivity_matches_perturbation() {
    use powersynth::grid::sensitivity::{analytic, monitored_nodes, perturbation, PERTURBATION_KW};
    let Some(feeders) = feeders() else { return };
    type Setup<'a> = (
        &'a str,
        f64,
        &'a [&'a str],
        &'a [(&'a str, i32)],
        &'a [&'a str],
    );
    let setups: [Setup; 3] = [
        (
            "ieee13/IEEE13Bus.dss",
            1.0,
            &["671"],
            &[("creg1a", 14), ("creg1b", 6), ("creg1c", 15)],
            &["sourcebus", "650", "rg60"],
        ),
        (
            "ieee34/IEEE34Bus.dss",
            1.09,
            &["850", "834"],
            &[
                ("creg1a", 12),
                ("creg1b", 8),
                ("creg1c", 10),
                ("creg2a", 8),
                ("creg2b", 8),
                ("creg2c", 8),
            ],
            &[
                "sourcebus",
                "800",
                "802",
                "806",
                "808",
                "810",
                "812",
                "814",
                "888",
                "890",
            ],
        ),
        (
            "ieee123/IEEE123Bus.dss",
            1.0,
            &["8", "23", "60", "105"],
            &[
                ("creg1a", 9),
                ("creg2a", 5),
                ("creg3a", 5),
                ("creg3c", 5),
                ("creg4a", 14),
                ("creg4b", 1),
                ("creg4c", 4),
            ],
            &[
                "sourcebus",
                "150",
                "150r",
                "149",
                "9r",
                "25r",
                "160r",
                "61s",
                "610",
                "300_open",
                "94_open",
            ],
        ),
    ];
    for (file, pu, buses, taps, excluded) in setups {
        let setup = GridSetup {
            source_pu: Some(pu),
            taps: taps.iter().map(|(r, s)| (r.to_string(), *s)).collect(),
            datacenter_buses: buses.iter().map(|b| b.to_string()).collect(),
        };
        let mut grid = PreparedGrid::open(&feeders.join(file), &setup).unwrap();
        grid.flow.options.tolerance_pu = 1e-9;
        for a in 0..buses.len() {
            grid.set_datacenter_kw(a, [500.0; 3], 0.95);
        }
        let excluded: Vec<String> = excluded.iter().map(|s| s.to_string()).collect();
        let monitored = monitored_nodes(&grid.flow, &excluded);
        for (a, bus) in buses.iter().enumerate() {
            let p = perturbation(&mut grid, a, [500.0; 3], 0.95, &monitored).unwrap();
            let h = analytic(&grid, a, 0.95, PERTURBATION_KW, &monitored).unwrap();
            let d = h.relative_difference(&p);
            // The tangent (step 0) against a ±1 kW central difference: the linearisation is
            // the derivative itself.
            let tangent = analytic(&grid, a, 0.95, 0.0, &monitored).unwrap();
            let central = central_difference(&mut grid, a, &monitored);
            let dt = tangent.relative_difference(&central);
            let secant_vs_tangent = p.relative_difference(&tangent);
            println!(
                "{file} dc {}: analytic vs perturbation {d:.2e}; tangent vs ±1 kW {dt:.2e}; \
                 the peer's 100 kW secant vs the tangent {secant_vs_tangent:.3}",
                bus
            );
            assert!(d < 0.02, "{file} {}: {d}", bus);
            assert!(dt < 1e-3, "{file} {}: tangent {dt}", bus);
        }
    }
}

/// dV/dP by a ±1 kW central difference (two solves per phase), for the tangent check.
fn central_difference(
    grid: &mut PreparedGrid,
    a: usize,
    monitored: &[usize],
) -> powersynth::grid::sensitivity::Sensitivity {
    let mut h = vec![[0.0; 3]; monitored.len()];
    for phase in 0..3 {
        let mut up = [500.0; 3];
        up[phase] += 1.0;
        let mut down = [500.0; 3];
        down[phase] -= 1.0;
        grid.set_datacenter_kw(a, up, 0.95);
        grid.flow.solve().unwrap();
        let vu = grid.flow.voltages_pu();
        grid.set_datacenter_kw(a, down, 0.95);
        grid.flow.solve().unwrap();
        let vd = grid.flow.voltages_pu();
        for (row, &n) in monitored.iter().enumerate() {
            h[row][phase] = (vu[n] - vd[n]) / 2.0;
        }
    }
    grid.set_datacenter_kw(a, [500.0; 3], 0.95);
    grid.flow.solve().unwrap();
    powersynth::grid::sensitivity::Sensitivity {
        nodes: monitored.to_vec(),
        h,
    }
}

/// A battery run against OpenDSS's `Storage` element (`ieee13_storage.json`, made by
/// `make_golden.py`): per 60 s step every node voltage, the battery's terminal power, its
/// state and its SOC, at source 1.0 pu and at 0.86 pu (terminals below the 0.9 pu band).
#[test]
fn storage_matches_opendss() {
    use powersynth::coordinator::{
        Component, Events, Grid, GridCommand, Seconds, SimulationClock, ThreePhase,
    };
    use powersynth::grid::component::{FeederGrid, FeederGridConfig};
    use powersynth::grid::storage::StorageSpec;
    let Some(feeders) = feeders() else { return };
    let fx = fixture("ieee13_storage");
    for (run_name, run) in fx["runs"].as_object().unwrap() {
        let st = &run["storage"];
        let f = |k: &str| st[k].as_f64().unwrap();
        let taps = run["taps"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap() as i32))
            .collect();
        let mut grid = FeederGrid::new(FeederGridConfig {
            feeder: feeders.join("ieee13/IEEE13Bus.dss"),
            dt_s: Seconds::from_integer(60),
            source_pu: run["source_pu"].as_f64(),
            taps,
            datacenters: vec![("dc".into(), "671".into())],
            pf: 0.95,
            excluded_buses: vec![],
            tolerance_pu: 1e-9,
            profiles: vec![],
            storage: vec![StorageSpec {
                name: "bess".into(),
                bus: st["bus"].as_str().unwrap().into(),
                kw_rated: f("kw_rated"),
                kva_rated: f("kva_rated"),
                kwh_rated: f("kwh_rated"),
                initial_soc: f("initial_soc"),
                reserve_soc: f("reserve_soc"),
                charge_efficiency: f("charge_efficiency"),
                discharge_efficiency: f("discharge_efficiency"),
                idling_percent: f("idling_percent"),
            }],
        })
        .unwrap();
        grid.reset();
        let mut clock = SimulationClock::new(Seconds::from_integer(60)).unwrap();
        let mut events = Events::default();
        let (mut worst_v, mut worst_p, mut worst_soc) = (0.0f64, 0.0f64, 0.0f64);
        for (k, step) in run["steps"].as_array().unwrap().iter().enumerate() {
            let g = |key: &str| step[key].as_f64().unwrap();
            grid.apply_control(
                &GridCommand::SetStoragePower {
                    storage: "bess".into(),
                    power_kw: g("dispatch_kw"),
                    reactive_power_kvar: g("dispatch_kvar"),
                },
                &mut events,
            )
            .unwrap();
            let w = g("dc_kw_per_phase") * 1000.0;
            let sample = ThreePhase { a: w, b: w, c: w };
            let state = grid.step(&clock, &[vec![sample]], &mut events).unwrap();
            clock.advance();
            for (node, want) in step["nodes"].as_object().unwrap() {
                let (bus, phase) = node.rsplit_once('.').unwrap();
                let phase: usize = phase.parse().unwrap();
                let got = state.voltage(bus, phase).unwrap();
                worst_v = worst_v.max((got - want.as_f64().unwrap()).abs());
            }
            let b = &state.storage[0];
            let want_mode = match step["state"].as_i64().unwrap() {
                -1 => "charging",
                1 => "discharging",
                _ => "idling",
            };
            assert_eq!(b.mode, want_mode, "{run_name} step {k}");
            worst_p = worst_p
                .max((b.power_kw - g("power_kw")).abs())
                .max((b.reactive_power_kvar - g("reactive_power_kvar")).abs());
            worst_soc = worst_soc.max((b.soc - g("soc")).abs());
        }
        eprintln!(
            "{run_name}: worst |ΔV| {worst_v:.2e} pu, |ΔP|,|ΔQ| {worst_p:.3} kW/kvar, \
             |ΔSOC| {worst_soc:.2e}"
        );
        assert!(worst_v < 1e-4, "{run_name}: voltages off by {worst_v:e} pu");
        // OpenDSS stops at its 1e-4 tolerance: below the band (constant impedance) its power
        // is off its own fixed point by up to ~1e-4 relative, 0.05 kW of 470 kW here.
        assert!(worst_p < 0.1, "{run_name}: power off by {worst_p} kW");
        assert!(worst_soc < 1e-4, "{run_name}: SOC off by {worst_soc:e}");
    }
}
