//! A [`Feeder`] as a nodal network: every bus-node gets an index, every element its primitive
//! admittance matrix over its conductors (OpenDSS's `Yprim`), loads keep what their current
//! injection needs, and the source is a Norton equivalent.
//!
//! Conventions (checked against OpenDSS's own `Yprim`s of the IEEE feeders): a transformer's
//! impedance is per unit on winding 1's kVA per phase, referred through each winding's rated
//! voltage × tap ("one-volt base"); a delta winding of phase k lies between conductors k and
//! k − 1; unnamed conductors of a terminal whose nodes are written go to ground.

use std::collections::HashMap;

use faer::c64;
use faer::linalg::solvers::DenseSolveCore;
use faer::Mat;

use super::feeder::{Connection, Feeder, Load, LoadModel, Transformer};
use super::GridError;

/// A node of the network: `bus.phase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub(crate) bus: String,
    pub(crate) phase: usize,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.bus, self.phase)
    }
}

/// An element's admittance over its conductors (`None`: ground).
#[derive(Debug, Clone)]
pub struct Primitive {
    pub name: String,
    pub(crate) nodes: Vec<Option<usize>>,
    /// Row-major `n × n`, siemens.
    pub(crate) y: Vec<c64>,
}

/// How a load branch draws current; `v_base` is the branch's rated voltage (V).
#[derive(Debug, Clone)]
pub(crate) struct LoadBranch {
    /// Terminals of the branch (`None`: ground).
    pub(crate) from: Option<usize>,
    pub(crate) to: Option<usize>,
    /// Nominal power of this branch (W, var).
    pub(crate) p_w: f64,
    pub(crate) q_var: f64,
    pub(crate) v_base_v: f64,
    pub(crate) model: LoadModel,
    pub(crate) vminpu: f64,
    pub(crate) vmaxpu: f64,
    pub(crate) vlowpu: f64,
    pub(crate) cvr_watts: f64,
    pub(crate) cvr_vars: f64,
}

impl LoadBranch {
    /// The constant admittance OpenDSS puts in the system matrix for this branch:
    /// Yeq = (P − jQ)/Vbase².
    pub(crate) fn y_eq(&self) -> c64 {
        c64::new(self.p_w, -self.q_var) / (self.v_base_v * self.v_base_v)
    }
}

/// Index ranges of a load's branches in [`Network::load_branches`].
#[derive(Debug, Clone)]
pub struct LoadEntry {
    pub name: String,
    pub bus: String,
    pub(crate) branches: std::ops::Range<usize>,
}

/// The network: nodes, primitives, loads, the source.
#[derive(Debug, Clone)]
pub struct Network {
    pub nodes: Vec<Node>,
    node_index: HashMap<(String, usize), usize>,
    /// Line-to-neutral base voltage of each bus (V), from the feeder's voltage bases.
    pub(crate) bus_base_v: HashMap<String, f64>,
    /// Series and shunt elements (lines, transformers, capacitors, the source's impedance).
    pub(crate) primitives: Vec<Primitive>,
    pub(crate) loads: Vec<LoadEntry>,
    pub(crate) load_branches: Vec<LoadBranch>,
    /// The source's Norton current into its nodes (A).
    pub(crate) source_current: Vec<(usize, c64)>,
    /// Transformer primitives' positions, for tap changes.
    pub(crate) transformer_primitive: HashMap<String, usize>,
    pub(crate) transformers: Vec<Transformer>,
    frequency_hz: f64,
}

impl Network {
    /// Builds the network of a feeder; bus voltage bases come from a zero-load solve, as
    /// OpenDSS's `CalcVoltageBases` does (see [`super::powerflow::assign_voltage_bases`]).
    pub(crate) fn new(feeder: &Feeder) -> Result<Network, GridError> {
        let mut net = Network {
            nodes: Vec::new(),
            node_index: HashMap::new(),
            bus_base_v: HashMap::new(),
            primitives: Vec::new(),
            loads: Vec::new(),
            load_branches: Vec::new(),
            source_current: Vec::new(),
            transformer_primitive: HashMap::new(),
            transformers: feeder.transformers.clone(),
            frequency_hz: feeder.base_frequency_hz,
        };
        net.add_source(feeder)?;
        for t in &feeder.transformers {
            let p = net.transformer_primitive_of(t)?;
            net.transformer_primitive
                .insert(t.name.clone(), net.primitives.len());
            net.primitives.push(p);
        }
        for line in &feeder.lines {
            net.add_line(line)?;
        }
        for cap in &feeder.capacitors {
            net.add_capacitor(cap)?;
        }
        for load in &feeder.loads {
            net.add_load(load)?;
        }
        Ok(net)
    }

    /// The index of `bus.phase`, if the network has that node.
    pub fn node(&self, bus: &str, phase: usize) -> Option<usize> {
        self.node_index
            .get(&(bus.to_ascii_lowercase(), phase))
            .copied()
    }

    /// Whether the network has a bus of that name.
    pub(crate) fn has_bus(&self, bus: &str) -> bool {
        self.bus_base_v.contains_key(&bus.to_ascii_lowercase())
    }

    /// Bus names, in the order their first node appeared.
    pub(crate) fn bus_names(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.nodes
            .iter()
            .filter(|n| seen.insert(n.bus.clone()))
            .map(|n| n.bus.clone())
            .collect()
    }

    fn intern(&mut self, bus: &str, node: usize) -> Option<usize> {
        self.bus_base_v.entry(bus.to_string()).or_insert(0.0);
        if node == 0 {
            return None;
        }
        let key = (bus.to_string(), node);
        if let Some(&i) = self.node_index.get(&key) {
            return Some(i);
        }
        let i = self.nodes.len();
        self.nodes.push(Node {
            bus: bus.to_string(),
            phase: node,
        });
        self.node_index.insert(key, i);
        Some(i)
    }

    fn terminal(&mut self, bus: &super::feeder::BusSpec, defaults: &[usize]) -> Vec<Option<usize>> {
        bus.conductor_nodes(defaults)
            .into_iter()
            .map(|n| self.intern(&bus.bus, n))
            .collect()
    }

    fn add_source(&mut self, feeder: &Feeder) -> Result<(), GridError> {
        let s = &feeder.source;
        let nodes = self.terminal(&s.bus1, &[1, 2, 3]);
        let z1 = c64::new(s.z1_ohm.0, s.z1_ohm.1);
        let z0 = c64::new(s.z0_ohm.0, s.z0_ohm.1);
        let zs = (z1 * 2.0 + z0) / 3.0;
        let zm = (z0 - z1) / 3.0;
        let z: Vec<c64> = (0..9)
            .map(|k| if k / 3 == k % 3 { zs } else { zm })
            .collect();
        let y = invert(&z, 3).ok_or_else(|| GridError::Singular {
            what: "the source impedance cannot be inverted".into(),
        })?;
        let v_ln = s.pu * s.base_kv * 1000.0 / 3f64.sqrt();
        let v: Vec<c64> = (0..3)
            .map(|k| c64::from_polar(v_ln, (s.angle_deg - 120.0 * k as f64).to_radians()))
            .collect();
        for i in 0..3 {
            if let Some(n) = nodes[i] {
                let current: c64 = (0..3).map(|j| y[i * 3 + j] * v[j]).sum();
                self.source_current.push((n, current));
            }
        }
        self.primitives.push(Primitive {
            name: "vsource.source".into(),
            nodes,
            y,
        });
        Ok(())
    }

    fn add_line(&mut self, line: &super::feeder::Line) -> Result<(), GridError> {
        let n = line.impedance.phases;
        let defaults: Vec<usize> = (1..=n).collect();
        let mut nodes = self.terminal(&line.bus1, &defaults);
        nodes.extend(self.terminal(&line.bus2, &defaults));
        let k = line.length_factor();
        let z: Vec<c64> = (0..n * n)
            .map(|i| c64::new(line.impedance.r[i], line.impedance.x[i]) * k)
            .collect();
        let ys = invert(&z, n).ok_or_else(|| GridError::Singular {
            what: format!("line {}'s impedance matrix cannot be inverted", line.name),
        })?;
        let omega = 2.0 * std::f64::consts::PI * self.frequency_hz;
        let mut y = vec![c64::new(0.0, 0.0); 4 * n * n];
        let m = 2 * n;
        for i in 0..n {
            for j in 0..n {
                let shunt = c64::new(0.0, omega * line.impedance.c_nf[i * n + j] * 1e-9 * k / 2.0);
                let s = ys[i * n + j];
                y[i * m + j] = s + shunt;
                y[(i + n) * m + (j + n)] = s + shunt;
                y[i * m + (j + n)] = -s;
                y[(i + n) * m + j] = -s;
            }
        }
        self.primitives.push(Primitive {
            name: format!("line.{}", line.name),
            nodes,
            y,
        });
        Ok(())
    }

    /// A two-winding transformer's primitive over [winding 1 conductors (phases + neutral),
    /// winding 2 conductors].
    pub(crate) fn transformer_primitive_of(
        &mut self,
        t: &Transformer,
    ) -> Result<Primitive, GridError> {
        let n = t.phases;
        let conductors = n + 1;
        let defaults: Vec<usize> = (1..=n).chain(std::iter::once(0)).collect();
        let mut nodes = Vec::with_capacity(2 * conductors);
        for w in &t.windings {
            nodes.extend(self.terminal(&w.bus, &defaults));
        }
        Ok(Primitive {
            name: format!("transformer.{}", t.name),
            nodes,
            y: transformer_y(t),
        })
    }

    fn add_capacitor(&mut self, cap: &super::feeder::Capacitor) -> Result<(), GridError> {
        let n = cap.phases;
        let defaults: Vec<usize> = (1..=n).collect();
        let phase_nodes = self.terminal(&cap.bus1, &defaults);
        let omega_c = |kvar: f64, kv: f64| kvar * 1000.0 / (kv * 1000.0).powi(2);
        let (nodes, y) = match cap.connection {
            Connection::Wye => {
                // Per-phase susceptance: (kvar/phases) over the phase voltage squared.
                let v_phase_kv = if n == 1 { cap.kv } else { cap.kv / 3f64.sqrt() };
                let b = omega_c(cap.kvar / n as f64, v_phase_kv);
                let mut y = vec![c64::new(0.0, 0.0); n * n];
                for i in 0..n {
                    y[i * n + i] = c64::new(0.0, b);
                }
                (phase_nodes, y)
            }
            Connection::Delta => {
                let b = omega_c(cap.kvar / n as f64, cap.kv);
                let mut y = vec![c64::new(0.0, 0.0); n * n];
                let branches: Vec<(usize, usize)> = match n {
                    1 => vec![],
                    2 => vec![(0, 1)],
                    _ => (0..n).map(|i| (i, (i + 1) % n)).collect(),
                };
                for (a, c) in branches {
                    y[a * n + a] += c64::new(0.0, b);
                    y[c * n + c] += c64::new(0.0, b);
                    y[a * n + c] -= c64::new(0.0, b);
                    y[c * n + a] -= c64::new(0.0, b);
                }
                if n == 1 {
                    return Err(GridError::invalid(
                        format!("capacitor {}", cap.name),
                        "a 1-phase delta capacitor needs two nodes; write it as 2 phases",
                    ));
                }
                (phase_nodes, y)
            }
        };
        self.primitives.push(Primitive {
            name: format!("capacitor.{}", cap.name),
            nodes,
            y,
        });
        Ok(())
    }

    /// Adds a load; its branches draw current per its model (see [`LoadBranch`]).
    pub(crate) fn add_load(&mut self, load: &Load) -> Result<(), GridError> {
        let n = load.phases;
        let (defaults, v_base_v): (Vec<usize>, f64) = match (load.connection, n) {
            (Connection::Wye, 1) => (vec![1, 0], load.kv * 1000.0),
            (Connection::Wye, _) => (
                (1..=n).chain(std::iter::once(0)).collect(),
                load.kv * 1000.0 / 3f64.sqrt(),
            ),
            (Connection::Delta, 1) => (vec![1, 2], load.kv * 1000.0),
            (Connection::Delta, _) => ((1..=n).collect(), load.kv * 1000.0),
        };
        let nodes = self.terminal(&load.bus1, &defaults);
        let pairs: Vec<(Option<usize>, Option<usize>)> = match (load.connection, n) {
            (Connection::Wye, _) => (0..n).map(|i| (nodes[i], nodes[n])).collect(),
            (Connection::Delta, 1) => vec![(nodes[0], nodes[1])],
            (Connection::Delta, 2) => vec![(nodes[0], nodes[1])],
            (Connection::Delta, _) => (0..n).map(|i| (nodes[i], nodes[(i + 1) % n])).collect(),
        };
        let start = self.load_branches.len();
        let share = pairs.len() as f64;
        for (from, to) in pairs {
            self.load_branches.push(LoadBranch {
                from,
                to,
                p_w: load.kw * 1000.0 / share,
                q_var: load.kvar * 1000.0 / share,
                v_base_v,
                model: load.model,
                vminpu: load.vminpu,
                vmaxpu: load.vmaxpu,
                vlowpu: load.vlowpu,
                cvr_watts: load.cvr_watts,
                cvr_vars: load.cvr_vars,
            });
        }
        self.loads.push(LoadEntry {
            name: load.name.clone(),
            bus: load.bus1.bus.clone(),
            branches: start..self.load_branches.len(),
        });
        Ok(())
    }

    /// Sets a transformer's winding-2 tap and rebuilds its primitive.
    pub(crate) fn set_tap(&mut self, transformer: &str, tap_pu: f64) -> Result<(), GridError> {
        let Some(&p) = self.transformer_primitive.get(transformer) else {
            return Err(GridError::UnknownRegulator {
                name: transformer.into(),
                known: self
                    .transformer_primitive
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let t = self
            .transformers
            .iter_mut()
            .find(|t| t.name == transformer)
            .expect("primitive and transformer lists agree");
        t.windings[1].tap = tap_pu;
        self.primitives[p].y = transformer_y(t);
        Ok(())
    }

    /// A transformer's winding-2 tap.
    pub fn tap(&self, transformer: &str) -> Option<f64> {
        self.transformers
            .iter()
            .find(|t| t.name == transformer)
            .map(|t| t.windings[1].tap)
    }
}

/// OpenDSS's two-winding transformer admittance: per phase, y = 1/((R1 + R2 + jXHL) pu ·
/// Zbase), Zbase = 1/(kVA₁·1000/phases) on a one-volt base, referred through n_w = winding
/// voltage × tap; winding-terminal incidence (wye: phase–neutral, delta: k to k − 1);
/// anti-floating susceptance on every winding terminal.
fn transformer_y(t: &Transformer) -> Vec<c64> {
    let n = t.phases;
    let c = n + 1;
    let m = 2 * c;
    let va_phase = t.windings[0].kva * 1000.0 / n as f64;
    let z_pu = c64::new(
        (t.windings[0].pct_r + t.windings[1].pct_r) / 100.0,
        t.xhl_pct / 100.0,
    );
    let y_series = (z_pu / va_phase).inv();
    let winding_v = |k: usize| {
        let w = &t.windings[k];
        let v = match (w.connection, n) {
            (Connection::Wye, 1) | (Connection::Delta, _) => w.kv * 1000.0,
            (Connection::Wye, _) => w.kv * 1000.0 / 3f64.sqrt(),
        };
        v * w.tap
    };
    let nv = [winding_v(0), winding_v(1)];
    // Winding-to-winding admittance in terminal volts.
    let mut yw = [[c64::new(0.0, 0.0); 2]; 2];
    for a in 0..2 {
        for b in 0..2 {
            let sign = if a == b { 1.0 } else { -1.0 };
            yw[a][b] = y_series * sign / (nv[a] * nv[b]);
        }
    }
    // No-load losses and magnetising current, on winding 2 as OpenDSS puts them.
    let y_nl = c64::new(t.pct_noload_loss / 100.0, -t.pct_imag / 100.0) * va_phase;
    yw[1][1] += y_nl / (nv[1] * nv[1]);
    // A delta HV winding over a wye LV one lags (phase k to k − 1); otherwise k to k + 1.
    let delta_step = match (t.windings[0].connection, t.windings[1].connection) {
        (Connection::Delta, Connection::Wye) => n - 1,
        _ => 1,
    };
    // Anti-floating admittance on each winding terminal: −ppm·S/(2·Vbase²), untapped base.
    let y_ppm: Vec<c64> = (0..2)
        .map(|k| {
            c64::new(
                0.0,
                -t.ppm_antifloat * 1e-6 * va_phase / (2.0 * (nv[k] / t.windings[k].tap).powi(2)),
            )
        })
        .collect();
    let mut y = vec![c64::new(0.0, 0.0); m * m];
    for phase in 0..n {
        // (positive terminal, negative terminal) of each winding of this phase.
        let terminals: Vec<(usize, usize)> = (0..2)
            .map(|w| {
                let base = w * c;
                match t.windings[w].connection {
                    Connection::Wye => (base + phase, base + n),
                    Connection::Delta if n == 1 => (base, base + 1),
                    Connection::Delta => (base + phase, base + (phase + delta_step) % n),
                }
            })
            .collect();
        for a in 0..2 {
            for b in 0..2 {
                let (ap, an) = terminals[a];
                let (bp, bn) = terminals[b];
                let v = yw[a][b];
                y[ap * m + bp] += v;
                y[an * m + bn] += v;
                y[ap * m + bn] -= v;
                y[an * m + bp] -= v;
            }
            let (ap, an) = terminals[a];
            y[ap * m + ap] += y_ppm[a];
            y[an * m + an] += y_ppm[a];
        }
    }
    y
}

/// The inverse of a small dense complex matrix (row-major), by faer's LU.
pub(crate) fn invert(a: &[c64], n: usize) -> Option<Vec<c64>> {
    let m = Mat::<c64>::from_fn(n, n, |i, j| a[i * n + j]);
    let lu = m.partial_piv_lu();
    let inv = lu.inverse();
    let out: Vec<c64> = (0..n * n).map(|k| inv[(k / n, k % n)]).collect();
    out.iter()
        .all(|z| z.re.is_finite() && z.im.is_finite())
        .then_some(out)
}
