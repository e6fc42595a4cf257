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
