//! OpenDSS's static regulator control (what a feeder script's own `Solve` does with its
//! `RegControl`s): after each power flow every regulator compares its compensated voltage
//! u = V_winding/PTratio + (R + jX)·I_into_terminal/CTprim with `vreg`; one out of its band
//! moves by sign(n)·max(1, ⌊0.7·|n|⌋) steps (at most 16), n the rounded steps the boost
//! needs; all move in the same control iteration, up to 10 iterations.

use faer::c64;

use super::feeder::{Connection, Feeder};
use super::powerflow::PowerFlow;
use super::setup::TAP_STEP_PU;
use super::GridError;

/// Control iterations OpenDSS allows by default.
const MAX_CONTROL_ITERATIONS: usize = 10;
const MAX_TAP_CHANGE_STEPS: f64 = 16.0;
const TAP_MIN: f64 = 0.9;
const TAP_MAX: f64 = 1.1;

/// Runs the static control loop; returns (transformer, winding-2 tap) of every regulator.
pub(crate) fn static_control(
    flow: &mut PowerFlow,
    feeder: &Feeder,
) -> Result<Vec<(String, f64)>, GridError> {
    for _ in 0..MAX_CONTROL_ITERATIONS {
        flow.solve()?;
        let mut changes = Vec::new();
        for reg in &feeder.regulators {
            let tap = flow.network().tap(&reg.transformer).unwrap_or(1.0);
            if let Some(steps) = steps_needed(flow, feeder, reg)? {
                let new_tap = (tap + steps * TAP_STEP_PU).clamp(TAP_MIN, TAP_MAX);
                if (new_tap - tap).abs() > 1e-12 {
                    changes.push((reg.transformer.clone(), new_tap));
                }
            }
        }
        if changes.is_empty() {
            break;
        }
        flow.set_taps(&changes)?;
    }
    Ok(feeder
        .regulators
        .iter()
        .map(|r| {
            (
                r.transformer.clone(),
                flow.network().tap(&r.transformer).unwrap_or(1.0),
            )
        })
        .collect())
}

/// The steps a regulator moves now, or `None` inside its band.
fn steps_needed(
    flow: &PowerFlow,
    feeder: &Feeder,
    reg: &super::feeder::RegControl,
) -> Result<Option<f64>, GridError> {
    let t_index = feeder.regulator_transformer(&reg.name)?;
    let t = &feeder.transformers[t_index];
    let net = flow.network();
    let p = &net.primitives[net.transformer_primitive[&t.name]];
    let conductors = t.phases + 1;
    let w = reg.winding - 1;
    let phase_row = w * conductors;
    let other = match t.windings[w].connection {
        Connection::Wye => w * conductors + t.phases,
        Connection::Delta => w * conductors + if t.phases == 1 { 1 } else { t.phases - 1 },
    };
    let v = flow.voltages();
    let at = |k: usize| p.nodes[k].map_or(c64::new(0.0, 0.0), |n| v[n]);
    let v_winding = at(phase_row) - at(other);
    let m = p.nodes.len();
    let current_in: c64 = (0..m).map(|j| p.y[phase_row * m + j] * at(j)).sum();
    let u =
        v_winding / reg.pt_ratio + c64::new(reg.r_ldc, reg.x_ldc) * current_in / reg.ct_primary_a;
    let error_v = reg.vreg - u.norm();
    if error_v.abs() <= reg.band / 2.0 {
        return Ok(None);
    }
    let w_spec = &t.windings[w];
    let base_v = match (w_spec.connection, t.phases) {
        (Connection::Wye, 2 | 3) => w_spec.kv * 1000.0 / 3f64.sqrt(),
        _ => w_spec.kv * 1000.0,
    };
    let n = (error_v * reg.pt_ratio / base_v / TAP_STEP_PU).round();
    if n == 0.0 {
        return Ok(None);
    }
    let steps = (0.7 * n.abs()).trunc().clamp(1.0, MAX_TAP_CHANGE_STEPS);
    Ok(Some(steps * n.signum()))
}
