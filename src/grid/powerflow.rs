//! Three-phase unbalanced power flow by fixed-point current injection (OpenDSS's normal
//! solution): V = Y⁻¹ (I_source + Σ_loads (Y_fixed·V − I_load(V))), with Y — every element's
//! primitive plus each load's admittance at the power it had when Y was built — factorised
//! once (sparse LU, faer) and re-factorised only when taps or topology change.
//!
//! Each solve starts from the previous solution moved along the voltages' tangent to the
//! loads whose power changed since ([`Predictor`]): one iteration then usually meets the
//! tolerance. An iteration is one pass over the load branches ([`Kernel`]: contiguous, indices
//! already in the factors' pivot order) and one forward and backward substitution over faer's
//! simplicial LU factors ([`Factors`]: AMD ordering, 32-bit indices, inverted diagonal).

use std::collections::HashMap;

use faer::c64;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::linalg::amd;
use faer::sparse::linalg::lu::simplicial::{
    factorize_simplicial_numeric_lu, factorize_simplicial_numeric_lu_scratch, SimplicialLu,
};
use faer::sparse::{SparseColMat, SparseColMatRef, Triplet};
use faer::Mat;

use super::feeder::LoadModel;
use super::network::{LoadBranch, Network};
use super::GridError;

/// A voltage change (pu) in one iteration beyond which the solve is diverging.
const DIVERGED_PU: f64 = 10.0;

/// Most load branches whose change a solve predicts from; beyond, moving the start costs
/// more than the iterations it saves.
const MAX_PREDICTED_BRANCHES: usize = 32;

/// Relative change between iterations at which a tangent's linear iteration stops.
const TANGENT_TOLERANCE: f64 = 1e-6;

/// Iterations a tangent may take before the predictor gives up on its branch.
const TANGENT_MAX_ITERATIONS: usize = 100;

/// A predicted solve taking this many iterations marks the tangents as stale.
const STALE_ITERATIONS: usize = 3;

/// Stale tangents are re-taken only after this many solves per linear iteration they cost,
/// so re-taking them never costs more than a fraction of an iteration per solve.
const REFRESH_AMORTISATION: usize = 4;

const ZERO: c64 = c64::new(0.0, 0.0);

/// Solver settings.
#[derive(Debug, Clone, Copy)]
pub struct SolveOptions {
    /// Largest change of any node voltage between iterations (pu) at which the solve stops.
    pub tolerance_pu: f64,
    max_iterations: usize,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            tolerance_pu: 1e-6,
            max_iterations: 100,
        }
    }
}

/// How a solve ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveReport {
    pub converged: bool,
    /// Fixed-point iterations (the predicted start is not one).
    pub iterations: usize,
    /// The last iteration's largest voltage change (pu).
    last_change_pu: f64,
}

/// A network with its factorised admittance matrix and the present solution.
pub struct PowerFlow {
    net: Network,
    /// Line-to-neutral base (V) of every node.
    node_base_v: Vec<f64>,
    /// 1/base² of every node (the convergence test compares squared changes).
    inv_base_sq: Vec<f64>,
    /// Each load branch's admittance as it is inside Y.
    branch_y_fixed: Vec<c64>,
    kernel: Kernel,
    /// Present node voltages (V), then a 0 V entry for ground (`nodes.len() + 1` entries).
    v: Vec<c64>,
    /// The iteration's right-hand side and solution, in pivot order (`nodes.len() + 1`).
    work: Vec<c64>,
    predictor: Predictor,
    pub options: SolveOptions,
}

impl PowerFlow {
    /// Assigns bus voltage bases (zero-load solve, nearest of the feeder's bases), factorises
    /// Y and starts from the zero-load voltages.
    pub(crate) fn new(mut net: Network, voltage_bases_kv: &[f64]) -> Result<PowerFlow, GridError> {
        let zero_load = zero_load_voltages(&net)?;
        assign_voltage_bases(&mut net, &zero_load, voltage_bases_kv);
        let node_base_v: Vec<f64> = net.nodes.iter().map(|n| net.bus_base_v[&n.bus]).collect();
        let inv_base_sq = node_base_v.iter().map(|b| 1.0 / (b * b)).collect();
        let branch_y_fixed: Vec<c64> = net.load_branches.iter().map(LoadBranch::y_eq).collect();
        let kernel = Kernel::new(&net, &branch_y_fixed)?;
        let n = net.nodes.len();
        let mut v = zero_load;
        v.push(ZERO);
        let predictor = Predictor::new(&net);
        Ok(PowerFlow {
            net,
            node_base_v,
            inv_base_sq,
            branch_y_fixed,
            kernel,
            v,
            work: vec![ZERO; n + 1],
            predictor,
            options: SolveOptions::default(),
        })
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Node voltages (V, complex), in [`Network::nodes`] order.
    pub fn voltages(&self) -> &[c64] {
        &self.v[..self.net.nodes.len()]
    }

    /// Node voltage magnitudes in per unit of their bus base.
    pub fn voltages_pu(&self) -> Vec<f64> {
        self.voltages()
            .iter()
            .zip(&self.inv_base_sq)
            .map(|(v, inv_base_sq)| ((v.re * v.re + v.im * v.im) * inv_base_sq).sqrt())
            .collect()
    }

    /// Line-to-neutral base voltage (V) of each node.
    pub(crate) fn node_base_v(&self) -> &[f64] {
        &self.node_base_v
    }

    /// Sets a load's power (kW, kvar per branch share as the load defines it); Y is not
    /// rebuilt: the change enters through the load's injection.
    pub(crate) fn set_load_power(&mut self, load: usize, kw: f64, kvar: f64) {
        let entry = &self.net.loads[load];
        let share = entry.branches.len() as f64;
        for b in entry.branches.clone() {
            let branch = &mut self.net.load_branches[b];
            branch.p_w = kw * 1000.0 / share;
            branch.q_var = kvar * 1000.0 / share;
            self.kernel.branches[b].y_eq = branch.y_eq();
        }
    }

    /// A load's power at the present voltages (kW, kvar drawn, summed over its branches):
    /// its nominal power inside its band, what its model draws outside.
    pub(crate) fn load_power_kw(&self, load: usize) -> (f64, f64) {
        let v = self.voltages();
        let at = |n: Option<usize>| n.map_or(c64::new(0.0, 0.0), |n| v[n]);
        let mut s = c64::new(0.0, 0.0);
        for b in self.net.loads[load].branches.clone() {
            let branch = &self.net.load_branches[b];
            let vb = at(branch.from) - at(branch.to);
            s += vb * load_current(branch, vb).conj();
        }
        (s.re / 1000.0, s.im / 1000.0)
    }

    /// Adds a load and re-factorises.
    pub(crate) fn add_load(&mut self, load: &super::feeder::Load) -> Result<usize, GridError> {
        self.net.add_load(load)?;
        for b in self.branch_y_fixed.len()..self.net.load_branches.len() {
            self.branch_y_fixed.push(self.net.load_branches[b].y_eq());
        }
        self.kernel = Kernel::new(&self.net, &self.branch_y_fixed)?;
        self.predictor = Predictor::new(&self.net);
        Ok(self.net.loads.len() - 1)
    }

    /// Sets regulator transformers' winding-2 taps and re-factorises once.
    pub(crate) fn set_taps(&mut self, taps: &[(String, f64)]) -> Result<(), GridError> {
        for (t, tap) in taps {
            self.net.set_tap(t, *tap)?;
        }
        self.predictor.invalidate();
        self.kernel = Kernel::new(&self.net, &self.branch_y_fixed)?;
        Ok(())
    }

    /// Each load branch's admittance as it is inside the factorised Y.
    pub(crate) fn branch_y_fixed(&self) -> &[c64] {
        &self.branch_y_fixed
    }

    /// Solves Y·x = rhs in place with the factorised Y (no load currents), column by column.
    pub(crate) fn solve_linear(&self, rhs: &mut Mat<c64>) {
        let n = self.net.nodes.len();
        let (mut x, mut scratch) = (vec![ZERO; n], vec![ZERO; n]);
        for j in 0..rhs.ncols() {
            for (i, x) in x.iter_mut().enumerate() {
                *x = rhs[(i, j)];
            }
            self.kernel.factors.solve(&mut x, &mut scratch);
            for (i, x) in x.iter().enumerate() {
                rhs[(i, j)] = *x;
            }
        }
    }

    /// Solves from the present voltages, moved along the tangents of the loads whose power
    /// changed since the last solve; a predicted solve that fails is retried from the
    /// unmoved voltages, so the predictor never turns a solve that converges into an error.
    pub fn solve(&mut self) -> Result<SolveReport, GridError> {
        let predicted = self.predict();
        let mut result = self.iterate();
        if predicted && result.is_err() {
            self.v.copy_from_slice(&self.predictor.start);
            self.predictor.disable_changed();
            result = self.iterate();
        }
        self.predictor.record(&self.net, &result, predicted);
        result
    }

    /// The fixed-point iteration from the present voltages.
    fn iterate(&mut self) -> Result<SolveReport, GridError> {
        let opts = self.options;
        let mut last = f64::INFINITY;
        let mut worst_node = 0;
        for iteration in 1..=opts.max_iterations {
            self.kernel
                .iterate(&self.net.load_branches, &self.v, &mut self.work);
            let (worst_sq, node) = self.take_solution();
            last = worst_sq.sqrt();
            worst_node = node;
            if !(last < DIVERGED_PU) {
                // Voltages running away: more iterations only overflow.
                return Err(self.not_converged(iteration, last, worst_node));
            }
            if last <= opts.tolerance_pu {
                return Ok(SolveReport {
                    converged: true,
                    iterations: iteration,
                    last_change_pu: last,
                });
            }
        }
        Err(self.not_converged(opts.max_iterations, last, worst_node))
    }

    /// Moves the iteration's solution into the voltages; returns the largest squared change
    /// relative to each node's base (NaN if any change is NaN) and its node.
    fn take_solution(&mut self) -> (f64, usize) {
        let col_pos = &self.kernel.factors.col_pos;
        let mut worst = (0.0, 0);
        for (i, (v, inv_base_sq)) in self.v.iter_mut().zip(&self.inv_base_sq).enumerate() {
            let new = self.work[col_pos[i] as usize];
            let d = new - *v;
            let change_sq = (d.re * d.re + d.im * d.im) * inv_base_sq;
            if !(change_sq <= worst.0) {
                worst = (change_sq, i);
            }
            *v = new;
        }
        worst
    }

    fn not_converged(&self, iterations: usize, last: f64, worst_node: usize) -> GridError {
        GridError::NotConverged {
            iterations,
            worst_change_pu: last,
            worst_node: self.net.nodes[worst_node].to_string(),
            tolerance_pu: self.options.tolerance_pu,
        }
    }

    /// Moves the voltages along the tangents of the load branches whose power changed since
    /// the last converged solve (taking missing tangents at that solution); returns whether it
    /// did, the unmoved voltages then kept in `predictor.start`.
    fn predict(&mut self) -> bool {
        if !self.predictor.find_changed(&self.net) {
            return false;
        }
        let changed = std::mem::take(&mut self.predictor.changed);
        let ready = changed.iter().all(|&b| self.ensure_tangent(b));
        self.predictor.changed = changed;
        if ready {
            self.predictor.apply(&mut self.v, &self.net);
        }
        ready
    }

    /// Takes branch `b`'s tangent at the present voltages if it has none; false if it cannot
    /// have one (its linear iteration did not converge).
    fn ensure_tangent(&mut self, b: usize) -> bool {
        match self.predictor.tangents[b] {
            TangentState::Ready(_) => return true,
            TangentState::Unavailable => return false,
            TangentState::Missing => {}
        }
        let branch = &self.net.load_branches[b];
        let nodes = self.kernel.branches[b].nodes;
        let vb = self.v[nodes[0] as usize] - self.v[nodes[1] as usize];
        // A load's current is linear in its power at a given voltage, whatever its model.
        let per_unit = |p_w, q_var| {
            let unit = LoadBranch {
                p_w,
                q_var,
                ..branch.clone()
            };
            load_current(&unit, vb)
        };
        let (di_dp, di_dq) = (per_unit(1.0, 0.0), per_unit(0.0, 1.0));
        let dp = self.linear_response(b, di_dp);
        let dq = self.linear_response(b, di_dq);
        self.predictor.tangents[b] = match (dp, dq) {
            (Some((dp, cost_p)), Some((dq, cost_q))) => {
                self.predictor.cost += cost_p + cost_q;
                TangentState::Ready(Box::new(Tangent { dp, dq }))
            }
            _ => TangentState::Unavailable,
        };
        matches!(self.predictor.tangents[b], TangentState::Ready(_))
    }

    /// dV (node order) for an extra current `d_current` drawn by branch `b`, every load
    /// responding linearly around the present voltages: dV = Y⁻¹(−dI + Σ_l (Y_fixed,l −
    /// ∂I_l/∂V)·dV), iterated like the power flow itself. Returns dV and its iterations.
    fn linear_response(&self, b: usize, d_current: c64) -> Option<(Vec<c64>, usize)> {
        let n = self.net.nodes.len();
        let kernel = &self.kernel;
        let mut dv = vec![ZERO; n + 1];
        let mut t = vec![ZERO; n + 1];
        for iteration in 1..=TANGENT_MAX_ITERATIONS {
            t.fill(ZERO);
            let rows = kernel.branches[b].rows;
            t[rows[0] as usize] -= d_current;
            t[rows[1] as usize] += d_current;
            for (fast, branch) in kernel.branches.iter().zip(&self.net.load_branches) {
                let [f, to] = fast.nodes.map(|i| i as usize);
                let dvb = dv[f] - dv[to];
                if dvb != ZERO {
                    let di = directional_derivative(branch, self.v[f] - self.v[to], dvb);
                    let inj = fast.y_fixed * dvb - di;
                    t[fast.rows[0] as usize] += inj;
                    t[fast.rows[1] as usize] -= inj;
                }
            }
            kernel.factors.substitute(&mut t);
            let (mut change, mut scale) = (0.0f64, 0.0f64);
            for (i, dv) in dv[..n].iter_mut().enumerate() {
                let new = t[kernel.factors.col_pos[i] as usize];
                change = change.max(magnitude(new - *dv));
                scale = scale.max(magnitude(new));
                *dv = new;
            }
            if !change.is_finite() {
                return None;
            }
            if change <= TANGENT_TOLERANCE * scale {
                dv.truncate(n);
                return Some((dv, iteration));
            }
        }
        None
    }
}

/// The voltages' tangent to one load branch's power, taken at a solution: dV/dP and dV/dQ
/// (V per W and per var, node order).
struct Tangent {
    dp: Vec<c64>,
    dq: Vec<c64>,
}

enum TangentState {
    /// Not taken yet (or discarded as stale): taken at the next solve that needs it.
    Missing,
    Ready(Box<Tangent>),
    /// Its linear iteration did not converge, or a solve predicted from it failed: the
    /// branch's changes are not predicted until Y is rebuilt.
    Unavailable,
}

/// The warm start's predictor. After a converged solve, a solve whose only changes are the
/// powers of a few load branches starts from V + Σ_b (dV/dP_b·ΔP_b + dV/dQ_b·ΔQ_b): exact to
/// first order, so it leaves the second-order error (and any load crossing a band edge) to
/// the fixed-point iterations. Tangents are taken once per branch and factorisation, and
/// re-taken when predicted solves keep needing several iterations.
struct Predictor {
    /// Each load branch's power (W + j var) at the last converged solve.
    solved: Vec<c64>,
    /// Whether the voltages are a converged solution of the present Y at `solved`.
    valid: bool,
    tangents: Vec<TangentState>,
    /// Linear iterations the tangents taken since the last discard cost.
    cost: usize,
    /// Solves since the tangents were last discarded.
    age: usize,
    /// The load branches whose power changed (scratch of `find_changed`).
    changed: Vec<usize>,
    /// The voltages before the last prediction (restored if the predicted solve fails).
    start: Vec<c64>,
}

impl Predictor {
    fn new(net: &Network) -> Predictor {
        let branches = net.load_branches.len();
        Predictor {
            solved: vec![ZERO; branches],
            valid: false,
            tangents: (0..branches).map(|_| TangentState::Missing).collect(),
            cost: 0,
            age: 0,
            changed: Vec::new(),
            start: Vec::new(),
        }
    }

    /// Y changed: the voltages no longer solve it and the tangents no longer hold.
    fn invalidate(&mut self) {
        self.valid = false;
        self.discard_tangents();
    }

    fn discard_tangents(&mut self) {
        for t in &mut self.tangents {
            *t = TangentState::Missing;
        }
        self.cost = 0;
        self.age = 0;
    }

    /// Lists the branches whose power changed since the last converged solve; true if a
    /// prediction applies (a converged start, and between 1 and the limit of changes).
    fn find_changed(&mut self, net: &Network) -> bool {
        self.changed.clear();
        if !self.valid {
            return false;
        }
        for (b, (branch, solved)) in net.load_branches.iter().zip(&self.solved).enumerate() {
            if c64::new(branch.p_w, branch.q_var) != *solved {
                self.changed.push(b);
            }
        }
        !self.changed.is_empty() && self.changed.len() <= MAX_PREDICTED_BRANCHES
    }

    /// Moves `v` (the voltages, ground entry last) along the changed branches' tangents,
    /// the unmoved voltages kept in `start` (swapped in, not copied).
    fn apply(&mut self, v: &mut Vec<c64>, net: &Network) {
        std::mem::swap(v, &mut self.start);
        v.resize(self.start.len(), ZERO);
        let n = net.nodes.len();
        let mut moved = false;
        for &b in &self.changed {
            let TangentState::Ready(t) = &self.tangents[b] else {
                continue;
            };
            let now = &net.load_branches[b];
            let ds = c64::new(now.p_w, now.q_var) - self.solved[b];
            let along =
                t.dp.iter()
                    .zip(&t.dq)
                    .map(|(dp, dq)| dp * ds.re + dq * ds.im);
            if moved {
                for (v, d) in v[..n].iter_mut().zip(along) {
                    *v += d;
                }
            } else {
                for ((v, start), d) in v[..n].iter_mut().zip(&self.start).zip(along) {
                    *v = start + d;
                }
                moved = true;
            }
        }
        if !moved {
            v.copy_from_slice(&self.start);
        }
    }

    /// The last prediction's start failed: its branches are not predicted again.
    fn disable_changed(&mut self) {
        for &b in &self.changed {
            self.tangents[b] = TangentState::Unavailable;
        }
    }

    /// Notes a solve's outcome: a converged one is the next prediction's base; predicted
    /// solves that still took several iterations mark the tangents stale.
    fn record(&mut self, net: &Network, result: &Result<SolveReport, GridError>, predicted: bool) {
        self.age += 1;
        let Ok(report) = result else {
            self.valid = false;
            return;
        };
        self.valid = true;
        for (solved, branch) in self.solved.iter_mut().zip(&net.load_branches) {
            *solved = c64::new(branch.p_w, branch.q_var);
        }
        let stale = predicted && report.iterations >= STALE_ITERATIONS;
        if stale && self.age >= REFRESH_AMORTISATION * self.cost.max(1) {
            self.discard_tangents();
        }
    }
}

/// What one fixed-point iteration needs: the factors, the load branches in the factors'
/// pivot order, and the source's currents.
struct Kernel {
    factors: Factors,
    branches: Vec<FastBranch>,
    /// The source's Norton currents in pivot order, then the discarded ground slot.
    source_rhs: Vec<c64>,
}

/// A load branch as the iteration reads it.
#[derive(Debug, Clone, Copy)]
struct FastBranch {
    /// Terminals as indices into the voltages (`n`: ground, always 0 V).
    nodes: [u32; 2],
    /// Terminals as positions in the pivot-ordered right-hand side (`n`: discarded).
    rows: [u32; 2],
    y_fixed: c64,
    /// Yeq = conj(S)/V_base² at the branch's present power.
    y_eq: c64,
    law: Law,
}

/// A load model's current as I = Yeq·g(|V|)·V with g real — [`load_current`]'s models
/// rewritten so that an iteration needs no complex division (the exponential model, whose
/// P and Q scale differently, goes through [`load_current`] itself).
#[derive(Debug, Clone, Copy)]
struct Law {
    model: LoadModel,
    /// g above `v_max`: 1/vmaxpu² (constant PQ) or 1/vmaxpu (constant I).
    above: f64,
    /// g at `v_min`: 1/vminpu² or 1/vminpu (the interpolation band's upper end).
    at_min: f64,
    /// V_base and the band edges (V), then their squares.
    v_base: f64,
    v_low: f64,
    v_min: f64,
    v_base_sq: f64,
    v_low_sq: f64,
    v_min_sq: f64,
    v_max_sq: f64,
}

impl Law {
    fn new(b: &LoadBranch) -> Law {
        let (v_low, v_min, v_max) = (
            b.vlowpu * b.v_base_v,
            b.vminpu * b.v_base_v,
            b.vmaxpu * b.v_base_v,
        );
        let (above, at_min) = match b.model {
            LoadModel::ConstantI => (1.0 / b.vmaxpu, 1.0 / b.vminpu),
            _ => (1.0 / (b.vmaxpu * b.vmaxpu), 1.0 / (b.vminpu * b.vminpu)),
        };
        Law {
            model: b.model,
            above,
            at_min,
            v_base: b.v_base_v,
            v_low,
            v_min,
            v_base_sq: b.v_base_v * b.v_base_v,
            v_low_sq: v_low * v_low,
            v_min_sq: v_min * v_min,
            v_max_sq: v_max * v_max,
        }
    }

    /// g(|V|) from |V|² (`None`: the exponential model).
    #[inline]
    fn scale(&self, m2: f64) -> Option<f64> {
        let pq = match self.model {
            LoadModel::ConstantZ => return Some(1.0),
            LoadModel::Exponential => return None,
            LoadModel::ConstantPq => true,
            LoadModel::ConstantI => false,
        };
        Some(if m2 > self.v_min_sq && m2 <= self.v_max_sq {
            if pq {
                self.v_base_sq / m2
            } else {
                self.v_base / m2.sqrt()
            }
        } else if m2 > self.v_max_sq {
            self.above
        } else if m2 <= self.v_low_sq {
            1.0
        } else {
            // Linear in |V| from the impedance current at v_low to the band's at v_min.
            let vmag = m2.sqrt();
            let frac = (vmag - self.v_low) / (self.v_min - self.v_low);
            (self.v_low + (self.v_min * self.at_min - self.v_low) * frac) / vmag
        })
    }
}

impl Kernel {
    fn new(net: &Network, branch_y: &[c64]) -> Result<Kernel, GridError> {
        let factors = Factors::new(&assemble(net, branch_y)?)?;
        let n = net.nodes.len();
        let node = |t: Option<usize>| t.unwrap_or(n) as u32;
        let row = |t: Option<usize>| t.map_or(n as u32, |i| factors.row_pos[i]);
        let branches = net
            .load_branches
            .iter()
            .zip(branch_y)
            .map(|(b, &y_fixed)| FastBranch {
                nodes: [node(b.from), node(b.to)],
                rows: [row(b.from), row(b.to)],
                y_fixed,
                y_eq: b.y_eq(),
                law: Law::new(b),
            })
            .collect();
        let mut source_rhs = vec![ZERO; n + 1];
        for &(node, i) in &net.source_current {
            source_rhs[factors.row_pos[node] as usize] += i;
        }
        Ok(Kernel {
            factors,
            branches,
            source_rhs,
        })
    }

    /// One iteration: `t` ← Y⁻¹(I_source + Σ_b (Y_fixed,b − Yeq_b·g_b(|V_b|))·V_b) in pivot
    /// order, `v` the voltages with the ground entry (`load_branches` for the exponential
    /// model).
    fn iterate(&self, load_branches: &[LoadBranch], v: &[c64], t: &mut [c64]) {
        t.copy_from_slice(&self.source_rhs);
        for (b, fast) in self.branches.iter().enumerate() {
            let vb = v[fast.nodes[0] as usize] - v[fast.nodes[1] as usize];
            let inj = match fast.law.scale(vb.re * vb.re + vb.im * vb.im) {
                Some(g) => (fast.y_fixed - fast.y_eq * g) * vb,
                None => fast.y_fixed * vb - load_current(&load_branches[b], vb),
            };
            t[fast.rows[0] as usize] += inj;
            t[fast.rows[1] as usize] -= inj;
        }
        self.factors.substitute(t);
    }
}

/// Y = P_rᵀ·L·U·P_cᵀ from faer's simplicial LU (AMD column ordering, partial pivoting),
/// repacked for substitution: 32-bit indices, U's diagonal inverted, and each factor's
/// columns visited in order of their dependency level, so that consecutive columns seldom
/// wait on each other and the CPU overlaps them.
struct Factors {
    /// Position of each node's equation in the pivot order.
    row_pos: Vec<u32>,
    /// Position of each node's voltage in the substitution's result.
    col_pos: Vec<u32>,
    lower: Triangle,
    upper: Triangle,
    /// 1/U's diagonal, in `upper`'s visiting order.
    upper_diag_inv: Vec<c64>,
}

/// One triangular factor's off-diagonal part, stored by column in visiting order.
struct Triangle {
    /// Pivot position of each visited column.
    cols: Vec<u32>,
    /// `ptr[c]..ptr[c + 1]`: visited column `c`'s entries.
    ptr: Vec<u32>,
    rows: Vec<u32>,
    vals: Vec<c64>,
}

impl Factors {
    fn new(y: &SparseColMat<usize, c64>) -> Result<Factors, GridError> {
        let n = y.nrows();
        if n >= u32::MAX as usize {
            return Err(GridError::Singular {
                what: format!("{n} nodes are more than the solver indexes"),
            });
        }
        let (perm, perm_inv) = amd_order(y)?;
        let col_perm = faer::perm::PermRef::new_checked(&perm, &perm_inv, n);
        let mut lu = SimplicialLu::<usize, c64>::new();
        let (mut row_perm, mut row_perm_inv) = (vec![0usize; n], vec![0usize; n]);
        let mut mem = MemBuffer::new(factorize_simplicial_numeric_lu_scratch::<usize, c64>(n, n));
        factorize_simplicial_numeric_lu(
            &mut row_perm,
            &mut row_perm_inv,
            &mut lu,
            y.as_ref(),
            col_perm,
            MemStack::new(&mut mem),
        )
        .map_err(|e| GridError::Singular {
            what: format!(
                "{e:?}: some node has no path to the source (a bus left floating by the \
                 feeder's connections?)"
            ),
        })?;
        let lower = Triangle::new(lu.l_factor_unsorted(), true);
        let u = lu.u_factor_unsorted();
        let upper = Triangle::new(u, false);
        let upper_diag_inv = upper
            .cols
            .iter()
            .map(|&j| {
                let j = j as usize;
                let diag = u
                    .row_idx_of_col(j)
                    .zip(u.val_of_col(j))
                    .find(|(i, _)| *i == j);
                diag.map_or(ZERO, |(_, d)| d.inv())
            })
            .collect();
        Ok(Factors {
            row_pos: row_perm_inv.iter().map(|&i| i as u32).collect(),
            col_pos: perm_inv.iter().map(|&i| i as u32).collect(),
            lower,
            upper,
            upper_diag_inv,
        })
    }

    /// Solves L·U·x = t in place, `t` in pivot order (entries past the factors' size are
    /// left alone).
    fn substitute(&self, t: &mut [c64]) {
        let lower = &self.lower;
        for (c, &j) in lower.cols.iter().enumerate() {
            let xj = t[j as usize];
            let (a, b) = (lower.ptr[c] as usize, lower.ptr[c + 1] as usize);
            for (&i, l) in lower.rows[a..b].iter().zip(&lower.vals[a..b]) {
                t[i as usize] -= l * xj;
            }
        }
        let upper = &self.upper;
        for (c, (&j, d)) in upper.cols.iter().zip(&self.upper_diag_inv).enumerate() {
            let xj = t[j as usize] * d;
            t[j as usize] = xj;
            let (a, b) = (upper.ptr[c] as usize, upper.ptr[c + 1] as usize);
            for (&i, u) in upper.rows[a..b].iter().zip(&upper.vals[a..b]) {
                t[i as usize] -= u * xj;
            }
        }
    }

    /// Solves Y·x = b in place, `x` in node order (`scratch`: as many entries).
    fn solve(&self, x: &mut [c64], scratch: &mut [c64]) {
        for (x, &r) in x.iter().zip(&self.row_pos) {
            scratch[r as usize] = *x;
        }
        self.substitute(scratch);
        for (x, &c) in x.iter_mut().zip(&self.col_pos) {
            *x = scratch[c as usize];
        }
    }
}

impl Triangle {
    /// Packs a unit lower (`lower`, forward substitution) or an upper factor's off-diagonal
    /// entries, columns sorted by dependency level: a column's level is one more than the
    /// highest level of the columns that update its pivot, so columns of one level are
    /// independent (visited in the substitution's natural order within a level).
    fn new(factor: SparseColMatRef<'_, usize, c64>, lower: bool) -> Triangle {
        let n = factor.ncols();
        let natural: Vec<usize> = if lower {
            (0..n).collect()
        } else {
            (0..n).rev().collect()
        };
        let mut level = vec![0u32; n];
        for &j in &natural {
            for i in factor.row_idx_of_col(j).filter(|&i| i != j) {
                level[i] = level[i].max(level[j] + 1);
            }
        }
        let mut cols = natural;
        cols.sort_by_key(|&j| level[j]);
        let mut t = Triangle {
            cols: Vec::with_capacity(n),
            ptr: vec![0],
            rows: Vec::new(),
            vals: Vec::new(),
        };
        for j in cols {
            for (i, v) in factor.row_idx_of_col(j).zip(factor.val_of_col(j)) {
                if i != j {
                    t.rows.push(i as u32);
                    t.vals.push(*v);
                }
            }
            t.cols.push(j as u32);
            t.ptr.push(t.rows.len() as u32);
        }
        t
    }
}

/// AMD ordering of Y's (symmetric) pattern: on a radial feeder it eliminates from the
/// laterals' ends inwards, with less fill than faer's default COLAMD.
fn amd_order(y: &SparseColMat<usize, c64>) -> Result<(Vec<usize>, Vec<usize>), GridError> {
    let n = y.nrows();
    let (mut perm, mut perm_inv) = (vec![0usize; n], vec![0usize; n]);
    let mut mem = MemBuffer::new(amd::order_maybe_unsorted_scratch::<usize>(
        n,
        y.compute_nnz(),
    ));
    amd::order_maybe_unsorted(
        &mut perm,
        &mut perm_inv,
        y.symbolic(),
        amd::Control::default(),
        MemStack::new(&mut mem),
    )
    .map_err(|e| GridError::Singular {
        what: format!("cannot order Y: {e:?}"),
    })?;
    Ok((perm, perm_inv))
}

/// The current a load branch draws at branch voltage `v` (from → to), OpenDSS's models:
/// constant PQ inside [vminpu, vmaxpu], current moving linearly from the PQ value at vminpu to
/// the impedance value at vlowpu, pure impedance below vlowpu, impedance Yeq/vmaxpu² above
/// vmaxpu; constant I likewise with Yeq/vminpu and Yeq/vmaxpu; constant Z always; exponential
/// P ∝ V^cvrwatts, Q ∝ V^cvrvars inside the band (as model 1 outside it).
pub(crate) fn load_current(b: &LoadBranch, v: c64) -> c64 {
    let y_eq = b.y_eq();
    let vmag = magnitude(v);
    let v_low = b.vlowpu * b.v_base_v;
    let v_min = b.vminpu * b.v_base_v;
    let v_max = b.vmaxpu * b.v_base_v;
    let s = c64::new(b.p_w, b.q_var);
    match b.model {
        LoadModel::ConstantZ => y_eq * v,
        LoadModel::ConstantPq => {
            if vmag <= v_low {
                y_eq * v
            } else if vmag <= v_min {
                let i_low = y_eq * v_low;
                let i_min = y_eq / (b.vminpu * b.vminpu) * v_min;
                let y = (i_low + (i_min - i_low) * ((vmag - v_low) / (v_min - v_low))) / vmag;
                y * v
            } else if vmag > v_max {
                y_eq / (b.vmaxpu * b.vmaxpu) * v
            } else {
                (s / v).conj()
            }
        }
        LoadModel::ConstantI => {
            if vmag <= v_low {
                y_eq * v
            } else if vmag <= v_min {
                let i_low = y_eq * v_low;
                let i_min = y_eq / b.vminpu * v_min;
                let y = (i_low + (i_min - i_low) * ((vmag - v_low) / (v_min - v_low))) / vmag;
                y * v
            } else if vmag > v_max {
                y_eq / b.vmaxpu * v
            } else {
                (s / (v / vmag * b.v_base_v)).conj()
            }
        }
        LoadModel::Exponential => {
            if vmag <= v_min || vmag > v_max {
                // Outside the band OpenDSS treats model 4 as model 1.
                let pq = LoadBranch {
                    model: LoadModel::ConstantPq,
                    ..b.clone()
                };
                load_current(&pq, v)
            } else {
                let ratio = vmag / b.v_base_v;
                let s = c64::new(
                    b.p_w * ratio.powf(b.cvr_watts),
                    b.q_var * ratio.powf(b.cvr_vars),
                );
                (s / v).conj()
            }
        }
    }
}

/// The change of a load branch's current along `dv` at `v` (central difference: the current
/// is real-differentiable in V inside each band).
fn directional_derivative(b: &LoadBranch, v: c64, dv: c64) -> c64 {
    let eps = 1e-4 * magnitude(v).max(1.0) / magnitude(dv);
    (load_current(b, v + dv * eps) - load_current(b, v - dv * eps)) / (2.0 * eps)
}

/// |z| without `hypot` (voltages and currents are far from overflow).
#[inline]
pub(crate) fn magnitude(z: c64) -> f64 {
    (z.re * z.re + z.im * z.im).sqrt()
}

/// Sums every primitive (and each load branch's fixed admittance) into Y.
fn assemble(net: &Network, branch_y: &[c64]) -> Result<SparseColMat<usize, c64>, GridError> {
    let mut entries: HashMap<(usize, usize), c64> = HashMap::new();
    let mut add = |i: Option<usize>, j: Option<usize>, y: c64| {
        if let (Some(i), Some(j)) = (i, j) {
            *entries.entry((i, j)).or_insert(ZERO) += y;
        }
    };
    for p in &net.primitives {
        let m = p.nodes.len();
        for a in 0..m {
            for b in 0..m {
                let y = p.y[a * m + b];
                if y != ZERO {
                    add(p.nodes[a], p.nodes[b], y);
                }
            }
        }
    }
    for (branch, &y) in net.load_branches.iter().zip(branch_y) {
        add(branch.from, branch.from, y);
        add(branch.to, branch.to, y);
        add(branch.from, branch.to, -y);
        add(branch.to, branch.from, -y);
    }
    let n = net.nodes.len();
    let mut triplets: Vec<Triplet<usize, usize, c64>> = entries
        .into_iter()
        .map(|((i, j), y)| Triplet::new(i, j, y))
        .collect();
    triplets.sort_by_key(|t| (t.col, t.row));
    SparseColMat::<usize, c64>::try_new_from_triplets(n, n, &triplets).map_err(|e| {
        GridError::Singular {
            what: format!("cannot assemble Y: {e:?}"),
        }
    })
}

/// Node voltages with every load removed (OpenDSS's zero-load solution for voltage bases).
fn zero_load_voltages(net: &Network) -> Result<Vec<c64>, GridError> {
    let mut bare = net.clone();
    bare.load_branches.clear();
    let factors = Factors::new(&assemble(&bare, &[])?)?;
    let n = net.nodes.len();
    let mut v = vec![ZERO; n];
    for &(node, i) in &net.source_current {
        v[node] += i;
    }
    factors.solve(&mut v, &mut vec![ZERO; n]);
    Ok(v)
}

/// Gives every bus the feeder voltage base (kV line-to-line) nearest its zero-load voltage,
/// as OpenDSS's `CalcVoltageBases` does; the stored base is line-to-neutral volts.
pub(crate) fn assign_voltage_bases(net: &mut Network, zero_load: &[c64], bases_kv: &[f64]) {
    let mut bus_kv: HashMap<String, f64> = HashMap::new();
    for (node, v) in net.nodes.iter().zip(zero_load) {
        bus_kv
            .entry(node.bus.clone())
            .or_insert(v.norm() * 3f64.sqrt() / 1000.0);
    }
    for (bus, base) in net.bus_base_v.iter_mut() {
        let kv = bus_kv.get(bus).copied().unwrap_or(0.0);
        let nearest = bases_kv
            .iter()
            .copied()
            .min_by(|a, b| {
                let da = (kv / a).ln().abs();
                let db = (kv / b).ln().abs();
                da.total_cmp(&db)
            })
            .unwrap_or(1.0);
        *base = nearest * 1000.0 / 3f64.sqrt();
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::grid::setup::{GridSetup, PreparedGrid};

    /// `../shared/data/feeders` beside the checkout, as the integration tests find it
    /// (`tests/common::shared`): CI always has it (`CI=true` makes its absence a failure);
    /// elsewhere a test that needs it is skipped with a note.
    fn shared_feeders() -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/feeders");
        if p.is_dir() {
            Some(p)
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{} is missing: CI must have ../shared beside the checkout",
                p.display()
            );
        } else {
            eprintln!("skipped: {} not found", p.display());
            None
        }
    }

    /// IEEE 13 with one datacenter at 500 kW per phase, solved to `tolerance`; `None` (the test
    /// skipped) without `../shared` (see [`shared_feeders`]).
    fn ieee13(tolerance: f64) -> Option<PreparedGrid> {
        let path = shared_feeders()?.join("ieee13/IEEE13Bus.dss");
        let setup = GridSetup {
            source_pu: Some(1.0),
            taps: vec![
                ("creg1a".into(), 14),
                ("creg1b".into(), 6),
                ("creg1c".into(), 15),
            ],
            datacenter_buses: vec!["671".into()],
        };
        let mut grid = PreparedGrid::open(&path, &setup).unwrap();
        grid.flow.options.tolerance_pu = tolerance;
        grid.set_datacenter_kw(0, [500.0; 3], 0.95);
        grid.flow.solve().unwrap();
        Some(grid)
    }

    /// Largest |a − b| (pu) over the nodes of two solutions.
    fn worst_difference(a: &PowerFlow, b: &PowerFlow) -> f64 {
        let (a, b) = (a.voltages_pu(), b.voltages_pu());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn grid_substitution_solves_y() {
        let Some(grid) = ieee13(1e-9) else { return };
        let flow = &grid.flow;
        let y = assemble(&flow.net, &flow.branch_y_fixed).unwrap();
        let n = y.nrows();
        let b: Vec<c64> = (0..n)
            .map(|i| c64::new(i as f64 + 1.0, 2.0 - i as f64))
            .collect();
        let mut x = b.clone();
        flow.kernel.factors.solve(&mut x, &mut vec![ZERO; n]);
        let mut residual = b.clone();
        for (j, xj) in x.iter().enumerate() {
            for (i, yij) in y.row_idx_of_col(j).zip(y.val_of_col(j)) {
                residual[i] -= yij * xj;
            }
        }
        // Relative to the row sums Σ|Y_ij·x_j| (the source's Norton admittance is ~1e6 times
        // the lines', so the terms cancel by that much).
        let mut row_scale = vec![0.0f64; n];
        for (j, xj) in x.iter().enumerate() {
            for (i, yij) in y.row_idx_of_col(j).zip(y.val_of_col(j)) {
                row_scale[i] += (yij * xj).norm();
            }
        }
        let worst = residual
            .iter()
            .zip(&row_scale)
            .map(|(r, s)| r.norm() / s.max(1e-300))
            .fold(0.0, f64::max);
        assert!(worst <= 1e-12, "relative residual {worst:e}");
    }

    #[test]
    fn grid_predicted_solve_matches_a_cold_one() {
        let Some(mut warm) = ieee13(1e-4) else { return };
        let kw = [530.0, 470.0, 515.0];
        warm.set_datacenter_kw(0, kw, 0.95);
        let report = warm.flow.solve().unwrap();
        assert_eq!(report.iterations, 1, "a 6 % step from a converged start");
        warm.flow.options.tolerance_pu = 1e-10;
        warm.flow.solve().unwrap();
        let mut cold = ieee13(1e-10).unwrap();
        cold.flow.predictor.invalidate();
        cold.set_datacenter_kw(0, kw, 0.95);
        cold.flow.solve().unwrap();
        let d = worst_difference(&warm.flow, &cold.flow);
        assert!(d < 1e-9, "predicted vs cold solve differ by {d:e} pu");
    }

    #[test]
    fn grid_failed_prediction_falls_back_to_the_unmoved_start() {
        let Some(mut grid) = ieee13(1e-9) else { return };
        grid.set_datacenter_kw(0, [510.0; 3], 0.95);
        grid.flow.solve().unwrap();
        // Poisoned tangents: the predicted start is NaN, so its solve fails.
        let steep = |t: &mut TangentState| {
            if let TangentState::Ready(t) = t {
                t.dp.iter_mut()
                    .chain(t.dq.iter_mut())
                    .for_each(|d| *d *= f64::NAN);
            }
        };
        grid.flow.predictor.tangents.iter_mut().for_each(steep);
        grid.set_datacenter_kw(0, [560.0; 3], 0.95);
        grid.flow.solve().unwrap();
        let loads = grid.attachments[0].loads;
        let branch = grid.flow.net.loads[loads[0]].branches.start;
        let state = &grid.flow.predictor.tangents[branch];
        assert!(
            matches!(state, TangentState::Unavailable),
            "{}",
            match state {
                TangentState::Ready(_) => "ready",
                TangentState::Unavailable => "unavailable",
                _ => "missing",
            }
        );
        let mut cold = ieee13(1e-9).unwrap();
        cold.set_datacenter_kw(0, [560.0; 3], 0.95);
        cold.flow.predictor.invalidate();
        cold.flow.solve().unwrap();
        assert!(worst_difference(&grid.flow, &cold.flow) < 1e-8);
    }
}
