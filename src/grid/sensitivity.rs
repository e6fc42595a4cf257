//! Voltage sensitivity H of the monitored bus-phases to a datacenter's power per phase
//! (pu per kW per phase, GRID.md "Voltage sensitivity"), two ways:
//! - [`perturbation`]: the peer's method — add 100 kW (and 100·tanφ kvar) to one phase,
//!   re-solve, difference, restore; 6 extra power flows per estimate;
//! - [`analytic`]: the power flow linearised at the present solution, solved with the already
//!   factorised Y (no re-solve, no new factorisation): dV = Y⁻¹(−dI_j + Σ_l (Y_fixed,l −
//!   ∂I_l/∂V)·dV), iterated like the power flow itself, each load's current derivative taken
//!   along dV (so every load model and band is handled), then d|V|/|V_base|.

use faer::c64;
use faer::Mat;

use super::network::LoadBranch;
use super::powerflow::{load_current, PowerFlow};
use super::setup::{tan_phi, PreparedGrid};
use super::GridError;

/// Simpson panels along a step (2·panels + 1 linear responses per phase).
const SIMPSON_PANELS: usize = 2;

/// Relative change of dV between iterations at which the linear response stops.
const LINEAR_TOLERANCE: f64 = 1e-8;

/// The step the peer perturbs each phase by (kW).
pub const PERTURBATION_KW: f64 = 100.0;

/// H: one row per monitored node, one column per datacenter phase (pu per kW).
#[derive(Debug, Clone, PartialEq)]
pub struct Sensitivity {
    /// Monitored node indices (into [`super::network::Network::nodes`]).
    pub nodes: Vec<usize>,
    /// Row-major `nodes.len() × 3`.
    pub h: Vec<[f64; 3]>,
}

impl Sensitivity {
    /// ‖a − b‖_F / ‖b‖_F.
    pub fn relative_difference(&self, reference: &Sensitivity) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (a, b) in self.h.iter().zip(&reference.h) {
            for k in 0..3 {
                num += (a[k] - b[k]).powi(2);
                den += b[k].powi(2);
            }
        }
        (num / den).sqrt()
    }
}

/// The monitored bus-phases: every node whose bus is not excluded, phase 1 of every bus, then
/// phase 2, then phase 3 (the peer's order), buses in network order.
pub fn monitored_nodes(flow: &PowerFlow, excluded_buses: &[String]) -> Vec<usize> {
    let net = flow.network();
    let excluded: Vec<String> = excluded_buses
        .iter()
        .map(|b| b.to_ascii_lowercase())
        .collect();
    let buses = net.bus_names();
    let mut out = Vec::new();
    for phase in 1..=3 {
        for bus in &buses {
            if excluded.contains(bus) {
                continue;
            }
            if let Some(n) = net.node(bus, phase) {
                out.push(n);
            }
        }
    }
    out
}

/// The peer's H: for each phase of the datacenter, +100 kW (+100·tanφ kvar), solve,
/// (v − v0)/100, restore and re-solve. `kw_per_phase` is the datacenter's present load.
pub fn perturbation(
    grid: &mut PreparedGrid,
    attachment: usize,
    kw_per_phase: [f64; 3],
    pf: f64,
    monitored: &[usize],
) -> Result<Sensitivity, GridError> {
    grid.set_datacenter_kw(attachment, kw_per_phase, pf);
    grid.flow.solve()?;
    let v0 = grid.flow.voltages_pu();
    let mut h = vec![[0.0; 3]; monitored.len()];
    for phase in 0..3 {
        let mut kw = kw_per_phase;
        kw[phase] += PERTURBATION_KW;
        grid.set_datacenter_kw(attachment, kw, pf);
        grid.flow.solve()?;
        let v = grid.flow.voltages_pu();
        for (row, &n) in monitored.iter().enumerate() {
            h[row][phase] = (v[n] - v0[n]) / PERTURBATION_KW;
        }
        grid.set_datacenter_kw(attachment, kw_per_phase, pf);
        grid.flow.solve()?;
    }
    Ok(Sensitivity {
        nodes: monitored.to_vec(),
        h,
    })
}

/// H from the linearised power flow (see the module docs). `step_kw` = 0 gives the tangent
/// at the present solution; `step_kw` > 0 the slope over a step of that size, as the peer's
/// perturbation measures it: the tangent re-taken at the step's midpoint, predicted from the
/// first tangent (still no solve and no new factorisation).
pub fn analytic(
    grid: &PreparedGrid,
    attachment: usize,
    pf: f64,
    step_kw: f64,
    monitored: &[usize],
) -> Result<Sensitivity, GridError> {
    let flow = &grid.flow;
    let net = flow.network();
    let v = flow.voltages();
    let tan = tan_phi(pf);
    let mut h = vec![[0.0; 3]; monitored.len()];
    for (phase, &load) in grid.attachments[attachment].loads.iter().enumerate() {
        let b = net.loads[load].branches.start;
        let branch = &net.load_branches[b];
        let per_kw = LoadBranch {
            p_w: 1000.0,
            q_var: 1000.0 * tan,
            ..branch.clone()
        };
        let tangent = linear_response(
            flow,
            v,
            branch,
            load_current(&per_kw, branch_voltage(v, branch)),
        )?;
        if step_kw > 0.0 {
            // The slope over the step: d|V|/dP integrated along the path the tangent
            // predicts (composite Simpson), so a load crossing its band edge within the step
            // counts for the part of the step it is across.
            let points = 2 * SIMPSON_PANELS + 1;
            for k in 0..points {
                let x = step_kw * k as f64 / (points - 1) as f64;
                let at: Vec<c64> = v.iter().zip(&tangent).map(|(v, d)| v + d * x).collect();
                let dv = if k == 0 {
                    tangent.clone()
                } else {
                    let i = load_current(&per_kw, branch_voltage(&at, branch));
                    linear_response(flow, &at, branch, i)?
                };
                let w = if k == 0 || k == points - 1 {
                    1.0
                } else if k % 2 == 1 {
                    4.0
                } else {
                    2.0
                } / (3.0 * (points - 1) as f64);
                for (row, &n) in monitored.iter().enumerate() {
                    let vk = at[n];
                    h[row][phase] += w * (vk.conj() * dv[n]).re / vk.norm() / flow.node_base_v()[n];
                }
            }
        } else {
            for (row, &n) in monitored.iter().enumerate() {
                let vk = v[n];
                h[row][phase] = (vk.conj() * tangent[n]).re / vk.norm() / flow.node_base_v()[n];
            }
        }
    }
    Ok(Sensitivity {
        nodes: monitored.to_vec(),
        h,
    })
}

fn branch_voltage(v: &[c64], b: &LoadBranch) -> c64 {
    let at = |n: Option<usize>| n.map_or(c64::new(0.0, 0.0), |n| v[n]);
    at(b.from) - at(b.to)
}

/// dV for an extra current `d_current` drawn by `branch`, every load responding linearly
/// around the voltages `v`.
fn linear_response(
    flow: &PowerFlow,
    v: &[c64],
    branch: &LoadBranch,
    d_current: c64,
) -> Result<Vec<c64>, GridError> {
    let net = flow.network();
    let n = v.len();
    let fixed = flow.branch_y_fixed();
    let mut dv = vec![c64::new(0.0, 0.0); n];
    let mut rhs = Mat::<c64>::zeros(n, 1);
    let mut last_change = f64::INFINITY;
    for _ in 0..100 {
        for i in 0..n {
            rhs[(i, 0)] = c64::new(0.0, 0.0);
        }
        let mut inject = |from: Option<usize>, to: Option<usize>, i: c64| {
            if let Some(f) = from {
                rhs[(f, 0)] += i;
            }
            if let Some(t) = to {
                rhs[(t, 0)] -= i;
            }
        };
        inject(branch.from, branch.to, -d_current);
        for (l, b) in net.load_branches.iter().enumerate() {
            let dvb = branch_voltage(&dv, b);
            let di = directional_derivative(b, branch_voltage(v, b), dvb);
            inject(b.from, b.to, fixed[l] * dvb - di);
        }
        flow.solve_linear(&mut rhs);
        let mut change: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for i in 0..n {
            change = change.max((rhs[(i, 0)] - dv[i]).norm());
            scale = scale.max(rhs[(i, 0)].norm());
            dv[i] = rhs[(i, 0)];
        }
        if change <= LINEAR_TOLERANCE * scale.max(1e-300) {
            return Ok(dv);
        }
        last_change = change / scale;
    }
    Err(GridError::NotConverged {
        iterations: 100,
        worst_change_pu: last_change,
        worst_node: "(sensitivity)".into(),
        tolerance_pu: LINEAR_TOLERANCE,
    })
}

/// The change of a load branch's current along dV (central difference; the current is
/// real-differentiable in V inside each band).
fn directional_derivative(b: &LoadBranch, v: c64, dv: c64) -> c64 {
    let size = dv.norm();
    if size == 0.0 {
        return c64::new(0.0, 0.0);
    }
    let eps = 1e-4 * v.norm().max(1.0) / size;
    (load_current(b, v + dv * eps) - load_current(b, v - dv * eps)) / (2.0 * eps)
}
