//! Three-phase unbalanced power flow by fixed-point current injection (OpenDSS's normal
//! solution): V = Y⁻¹ (I_source + Σ_loads (Y_fixed·V − I_load(V))), with Y — every element's
//! primitive plus each load's admittance at the power it had when Y was built — factorised
//! once (sparse LU, faer) and re-factorised only when taps or topology change. Each solve
//! starts from the previous solution.

use std::collections::HashMap;

use faer::c64;
use faer::linalg::solvers::SolveCore;
use faer::sparse::{SparseColMat, Triplet};
use faer::Mat;

use super::feeder::LoadModel;
use super::network::{LoadBranch, Network};
use super::GridError;

/// A voltage change (pu) in one iteration beyond which the solve is diverging.
const DIVERGED_PU: f64 = 10.0;

/// Solver settings.
#[derive(Debug, Clone, Copy)]
pub struct SolveOptions {
    /// Largest change of any node voltage between iterations (pu) at which the solve stops.
    pub tolerance_pu: f64,
    pub max_iterations: usize,
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
    pub iterations: usize,
    /// The last iteration's largest voltage change (pu).
    pub last_change_pu: f64,
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
    lu: faer::sparse::linalg::solvers::Lu<usize, c64>,
    /// Present node voltages (V).
    v: Vec<c64>,
    rhs: Mat<c64>,
    pub options: SolveOptions,
}

impl PowerFlow {
    /// Assigns bus voltage bases (zero-load solve, nearest of the feeder's bases), factorises
    /// Y and starts from the zero-load voltages.
    pub fn new(mut net: Network, voltage_bases_kv: &[f64]) -> Result<PowerFlow, GridError> {
        let zero_load = zero_load_voltages(&net)?;
        assign_voltage_bases(&mut net, &zero_load, voltage_bases_kv);
        let node_base_v: Vec<f64> = net.nodes.iter().map(|n| net.bus_base_v[&n.bus]).collect();
        let inv_base_sq = node_base_v.iter().map(|b| 1.0 / (b * b)).collect();
        let branch_y_fixed: Vec<c64> = net.load_branches.iter().map(LoadBranch::y_eq).collect();
        let lu = factorise(&net, &branch_y_fixed)?;
        let n = net.nodes.len();
        Ok(PowerFlow {
            net,
            node_base_v,
            inv_base_sq,
            branch_y_fixed,
            lu,
            v: zero_load,
            rhs: Mat::zeros(n, 1),
            options: SolveOptions::default(),
        })
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Node voltages (V, complex), in [`Network::nodes`] order.
    pub fn voltages(&self) -> &[c64] {
        &self.v
    }

    /// Node voltage magnitudes in per unit of their bus base.
    pub fn voltages_pu(&self) -> Vec<f64> {
        self.v
            .iter()
            .zip(&self.node_base_v)
            .map(|(v, b)| magnitude(*v) / b)
            .collect()
    }

    /// Line-to-neutral base voltage (V) of each node.
    pub fn node_base_v(&self) -> &[f64] {
        &self.node_base_v
    }

    /// Sets a load's power (kW, kvar per branch share as the load defines it); Y is not
    /// rebuilt: the change enters through the load's injection.
    pub fn set_load_power(&mut self, load: usize, kw: f64, kvar: f64) {
        let entry = &self.net.loads[load];
        let share = entry.branches.len() as f64;
        for b in entry.branches.clone() {
            self.net.load_branches[b].p_w = kw * 1000.0 / share;
            self.net.load_branches[b].q_var = kvar * 1000.0 / share;
        }
    }

    /// Index of a load by name.
    pub fn load_index(&self, name: &str) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        self.net.loads.iter().position(|l| l.name == name)
    }

    /// Adds a load and re-factorises.
    pub fn add_load(&mut self, load: &super::feeder::Load) -> Result<usize, GridError> {
        self.net.add_load(load)?;
        for b in self.branch_y_fixed.len()..self.net.load_branches.len() {
            self.branch_y_fixed.push(self.net.load_branches[b].y_eq());
        }
        self.lu = factorise(&self.net, &self.branch_y_fixed)?;
        Ok(self.net.loads.len() - 1)
    }

    /// Sets regulator transformers' winding-2 taps and re-factorises once.
    pub fn set_taps(&mut self, taps: &[(String, f64)]) -> Result<(), GridError> {
        for (t, tap) in taps {
            self.net.set_tap(t, *tap)?;
        }
        self.lu = factorise(&self.net, &self.branch_y_fixed)?;
        Ok(())
    }

    /// Each load branch's admittance as it is inside the factorised Y.
    pub fn branch_y_fixed(&self) -> &[c64] {
        &self.branch_y_fixed
    }

    /// Solves Y·x = rhs in place with the factorised Y (no load currents).
    pub fn solve_linear(&self, rhs: &mut Mat<c64>) {
        self.lu
            .solve_in_place_with_conj(faer::Conj::No, rhs.as_mut());
    }

    /// Solves from the present voltages.
    pub fn solve(&mut self) -> Result<SolveReport, GridError> {
        let opts = self.options;
        let mut last = f64::INFINITY;
        let mut worst_node = 0;
        for iteration in 1..=opts.max_iterations {
            self.fill_rhs();
            self.lu
                .solve_in_place_with_conj(faer::Conj::No, self.rhs.as_mut());
            // Largest change relative to each node's base, compared squared (no hypot).
            let mut worst_sq = 0.0;
            for i in 0..self.v.len() {
                let new = self.rhs[(i, 0)];
                let d = new - self.v[i];
                let change_sq = (d.re * d.re + d.im * d.im) * self.inv_base_sq[i];
                if change_sq > worst_sq {
                    worst_sq = change_sq;
                    worst_node = i;
                }
                self.v[i] = new;
            }
            last = worst_sq.sqrt();
            if !(last < DIVERGED_PU) {
                // Voltages running away: more iterations only overflow.
                return Err(GridError::NotConverged {
                    iterations: iteration,
                    worst_change_pu: last,
                    worst_node: self.net.nodes[worst_node].to_string(),
                    tolerance_pu: opts.tolerance_pu,
                });
            }
            if last <= opts.tolerance_pu {
                return Ok(SolveReport {
                    converged: true,
                    iterations: iteration,
                    last_change_pu: last,
                });
            }
        }
        Err(GridError::NotConverged {
            iterations: opts.max_iterations,
            worst_change_pu: last,
            worst_node: self.net.nodes[worst_node].to_string(),
            tolerance_pu: opts.tolerance_pu,
        })
    }

    fn fill_rhs(&mut self) {
        for i in 0..self.v.len() {
            self.rhs[(i, 0)] = c64::new(0.0, 0.0);
        }
        for &(n, i) in &self.net.source_current {
            self.rhs[(n, 0)] += i;
        }
        for (b, branch) in self.net.load_branches.iter().enumerate() {
            let at = |n: Option<usize>| n.map_or(c64::new(0.0, 0.0), |n| self.v[n]);
            let vb = at(branch.from) - at(branch.to);
            let inj = self.branch_y_fixed[b] * vb - load_current(branch, vb);
            if let Some(f) = branch.from {
                self.rhs[(f, 0)] += inj;
            }
            if let Some(t) = branch.to {
                self.rhs[(t, 0)] -= inj;
            }
        }
    }
}

/// The current a load branch draws at branch voltage `v` (from → to), OpenDSS's models:
/// constant PQ inside [vminpu, vmaxpu], current moving linearly from the PQ value at vminpu to
/// the impedance value at vlowpu, pure impedance below vlowpu, impedance Yeq/vmaxpu² above
/// vmaxpu; constant I likewise with Yeq/vminpu and Yeq/vmaxpu; constant Z always; exponential
/// P ∝ V^cvrwatts, Q ∝ V^cvrvars inside the band (as model 1 outside it).
pub fn load_current(b: &LoadBranch, v: c64) -> c64 {
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

/// |z| without `hypot` (voltages and currents are far from overflow).
#[inline]
pub fn magnitude(z: c64) -> f64 {
    (z.re * z.re + z.im * z.im).sqrt()
}

/// Sums every primitive (and each load branch's fixed admittance) into Y and factorises it.
fn factorise(
    net: &Network,
    branch_y: &[c64],
) -> Result<faer::sparse::linalg::solvers::Lu<usize, c64>, GridError> {
    let mut entries: HashMap<(usize, usize), c64> = HashMap::new();
    let mut add = |i: Option<usize>, j: Option<usize>, y: c64| {
        if let (Some(i), Some(j)) = (i, j) {
            *entries.entry((i, j)).or_insert(c64::new(0.0, 0.0)) += y;
        }
    };
    for p in &net.primitives {
        let m = p.nodes.len();
        for a in 0..m {
            for b in 0..m {
                let y = p.y[a * m + b];
                if y != c64::new(0.0, 0.0) {
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
    let y = SparseColMat::<usize, c64>::try_new_from_triplets(n, n, &triplets).map_err(|e| {
        GridError::Singular {
            what: format!("cannot assemble Y: {e:?}"),
        }
    })?;
    y.sp_lu().map_err(|e| GridError::Singular {
        what: format!(
            "{e:?}: some node has no path to the source (a bus left floating by the feeder's \
             connections?)"
        ),
    })
}

/// Node voltages with every load removed (OpenDSS's zero-load solution for voltage bases).
fn zero_load_voltages(net: &Network) -> Result<Vec<c64>, GridError> {
    let mut bare = net.clone();
    bare.load_branches.clear();
    let lu = factorise(&bare, &[])?;
    let mut rhs = Mat::<c64>::zeros(net.nodes.len(), 1);
    for &(n, i) in &net.source_current {
        rhs[(n, 0)] += i;
    }
    lu.solve_in_place_with_conj(faer::Conj::No, rhs.as_mut());
    Ok((0..net.nodes.len()).map(|i| rhs[(i, 0)]).collect())
}

/// Gives every bus the feeder voltage base (kV line-to-line) nearest its zero-load voltage,
/// as OpenDSS's `CalcVoltageBases` does; the stored base is line-to-neutral volts.
pub fn assign_voltage_bases(net: &mut Network, zero_load: &[c64], bases_kv: &[f64]) {
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
