//! A feeder prepared for a study as the peer does it (GRID.md "Grid start"): the source set to
//! a per-unit voltage, one single-phase wye constant-PQ load per phase at each datacenter bus
//! (kV = the bus's line-to-neutral base), regulator taps given in steps of 0.00625.

use std::path::Path;

use super::feeder::{BusSpec, Connection, Feeder, Load, LoadModel};
use super::powerflow::PowerFlow;
use super::GridError;

/// One regulator step (per unit tap).
pub(crate) const TAP_STEP_PU: f64 = 0.00625;

/// What a study puts on a feeder.
#[derive(Debug, Clone, Default)]
pub struct GridSetup {
    /// The source's per-unit voltage (`None`: the feeder's own).
    pub source_pu: Option<f64>,
    /// Regulator (RegControl) name → tap steps from 1.0.
    pub taps: Vec<(String, i32)>,
    /// Buses that get a three-phase datacenter attachment.
    pub datacenter_buses: Vec<String>,
}

/// A datacenter attachment: its three single-phase loads (phase 1, 2, 3).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub bus: String,
    pub(crate) loads: [usize; 3],
}

/// A prepared feeder: the power flow and the datacenter loads on it.
pub struct PreparedGrid {
    /// The feeder as read, with the taps its own `Solve` chose.
    pub feeder: Feeder,
    pub flow: PowerFlow,
    pub attachments: Vec<Attachment>,
}

impl PreparedGrid {
    /// Reads the feeder and applies the setup.
    pub fn open(path: &Path, setup: &GridSetup) -> Result<PreparedGrid, GridError> {
        let feeder = Feeder::read(path)?;
        PreparedGrid::new(feeder, setup)
    }

    /// Applies a setup to a feeder already read.
    pub fn new(mut feeder: Feeder, setup: &GridSetup) -> Result<PreparedGrid, GridError> {
        // The script's own `Solve` (regulator control on, the feeder as written) chooses the
        // taps of regulators the setup does not set.
        if feeder.solves && !feeder.regulators.is_empty() {
            let net = super::network::Network::new(&feeder)?;
            let mut flow = PowerFlow::new(net, &feeder.voltage_bases_kv)?;
            flow.options.tolerance_pu = 1e-4;
            for (name, tap) in super::regulators::static_control(&mut flow, &feeder)? {
                if let Some(t) = feeder.transformers.iter_mut().find(|t| t.name == name) {
                    t.windings[1].tap = tap;
                }
            }
        }
        if let Some(pu) = setup.source_pu {
            if !(pu > 0.0 && pu < 2.0) {
                return Err(GridError::invalid(
                    "source pu",
                    format!("{pu} is outside (0, 2)"),
                ));
            }
            feeder.source.pu = pu;
        }
        let net = super::network::Network::new(&feeder)?;
        let mut flow = PowerFlow::new(net, &feeder.voltage_bases_kv)?;
        let mut attachments = Vec::new();
        for (k, bus) in setup.datacenter_buses.iter().enumerate() {
            attachments.push(attach(&mut flow, bus, k, setup.datacenter_buses.len())?);
        }
        let mut taps = Vec::new();
        for (reg, steps) in &setup.taps {
            let t = feeder.regulator_transformer(reg)?;
            let tap = 1.0 + *steps as f64 * TAP_STEP_PU;
            taps.push((feeder.transformers[t].name.clone(), round6(tap)));
        }
        flow.set_taps(&taps)?;
        Ok(PreparedGrid {
            feeder,
            flow,
            attachments,
        })
    }

    /// Attaches one more three-phase set of single-phase wye loads (a generator or an
    /// external load) at `bus`; returns its attachment index.
    pub(crate) fn attach_extra(&mut self, bus: &str, name: &str) -> Result<usize, GridError> {
        let a = attach_named(&mut self.flow, bus, &|suffix| format!("{name}_{suffix}"))?;
        self.attachments.push(a);
        Ok(self.attachments.len() - 1)
    }

    /// Attaches a battery at `bus` as OpenDSS's three-phase wye `Storage` element sees the
    /// power flow (kV = the bus's line-to-neutral base × √3, constant power inside
    /// [0.9, 1.1] pu, the impedance continuous with it outside); returns its load index, whose
    /// power is the negative of the battery's injection ([`super::storage`]).
    pub(crate) fn attach_storage(&mut self, bus: &str, name: &str) -> Result<usize, GridError> {
        let bus = bus.to_ascii_lowercase();
        let context = format!("storage {name} bus");
        check_three_phase(&self.flow, &bus, &context, "a storage element")?;
        let kv_ln = self.flow.network().bus_base_v[&bus] / 1000.0;
        self.flow.add_load(&Load {
            name: format!("storage_{name}"),
            bus1: BusSpec {
                bus,
                nodes: vec![1, 2, 3],
            },
            phases: 3,
            connection: Connection::Wye,
            model: LoadModel::ConstantPq,
            kv: round6(kv_ln * 3f64.sqrt()),
            kw: 0.0,
            kvar: 0.0,
            vminpu: 0.9,
            vmaxpu: 1.1,
            // Below 0.9 pu the current falls linearly to 0 at 0 V: the impedance Yeq/0.9².
            vlowpu: 0.0,
            cvr_watts: 1.0,
            cvr_vars: 2.0,
        })
    }

    /// Sets every attachment's power per phase (kW; kvar from the power factor).
    pub fn set_datacenter_kw(&mut self, attachment: usize, kw_per_phase: [f64; 3], pf: f64) {
        let tan = tan_phi(pf);
        let loads = self.attachments[attachment].loads;
        for (phase, kw) in kw_per_phase.iter().enumerate() {
            self.flow.set_load_power(loads[phase], *kw, kw * tan);
        }
    }
}

/// tan(acos(pf)) with pf clamped to [1e-6, 0.999999] as the peer does.
pub(crate) fn tan_phi(pf: f64) -> f64 {
    let pf = pf.clamp(1e-6, 0.999_999);
    (1.0 - pf * pf).sqrt() / pf
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn attach(
    flow: &mut PowerFlow,
    bus: &str,
    index: usize,
    count: usize,
) -> Result<Attachment, GridError> {
    let name = |suffix: &str| {
        if count == 1 {
            format!("datacenter{suffix}")
        } else {
            format!("dc_{index}_{suffix}")
        }
    };
    attach_named(flow, bus, &name)
}

fn attach_named(
    flow: &mut PowerFlow,
    bus: &str,
    name: &dyn Fn(&str) -> String,
) -> Result<Attachment, GridError> {
    let bus = bus.to_ascii_lowercase();
    check_three_phase(flow, &bus, "datacenter bus", "a datacenter")?;
    let net = flow.network();
    let base_kv = round6(net.bus_base_v[&bus] / 1000.0);
    let mut loads = [0; 3];
    for (k, suffix) in ["a", "b", "c"].iter().enumerate() {
        loads[k] = flow.add_load(&Load {
            name: name(suffix),
            bus1: BusSpec {
                bus: bus.clone(),
                nodes: vec![k + 1],
            },
            phases: 1,
            connection: Connection::Wye,
            model: LoadModel::ConstantPq,
            kv: base_kv,
            kw: 0.0,
            kvar: 0.0,
            vminpu: 0.95,
            vmaxpu: 1.05,
            vlowpu: 0.5,
            cvr_watts: 1.0,
            cvr_vars: 2.0,
        })?;
    }
    Ok(Attachment { bus, loads })
}

/// `bus` exists and has phases 1, 2 and 3 (`what` needs them).
fn check_three_phase(
    flow: &PowerFlow,
    bus: &str,
    context: &str,
    what: &str,
) -> Result<(), GridError> {
    let net = flow.network();
    if !net.has_bus(bus) {
        return Err(unknown_bus(flow, bus, context));
    }
    for phase in 1..=3 {
        if net.node(bus, phase).is_none() {
            return Err(GridError::invalid(
                format!("{context} {bus}"),
                format!("has no phase {phase}; {what} needs a three-phase bus"),
            ));
        }
    }
    Ok(())
}

/// An unknown-bus error listing (some of) the feeder's buses.
pub(crate) fn unknown_bus(flow: &PowerFlow, bus: &str, context: &str) -> GridError {
    let names = flow.network().bus_names();
    let shown: Vec<&str> = names.iter().take(40).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    GridError::UnknownBus {
        bus: bus.to_string(),
        context: context.to_string(),
        known: if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        },
    }
}
