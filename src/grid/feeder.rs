//! A feeder script's commands → typed circuit elements ([`Feeder`]).
//!
//! Properties are applied in the order they were written, as OpenDSS does (`like=` copies the
//! named object's properties at that point; `Edit` and `~` append). Every value is checked
//! where it was written: an unknown property, a value that is not a number, a bad bus or a
//! winding count other than two is an error naming the file, line and token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::dss::{self, Command, Location, Param, Verb};
use super::GridError;

/// A bus terminal as written: `650.1.2.3` → bus `650`, nodes `[1, 2, 3]` (empty: defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BusSpec {
    /// Lowercase bus name.
    pub(crate) bus: String,
    /// Nodes written after the name (0 is ground).
    pub(crate) nodes: Vec<usize>,
}

impl BusSpec {
    fn parse(text: &str, location: &Location) -> Result<BusSpec, GridError> {
        let text = text.trim().to_ascii_lowercase();
        let mut parts = text.split('.');
        let bus = parts.next().unwrap_or("").to_string();
        if bus.is_empty() {
            return Err(bad(location, &text, "is not a bus name"));
        }
        let nodes = parts
            .map(|p| p.parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(
                    location,
                    &text,
                    "bus nodes must be whole numbers (bus.1.2.3)",
                )
            })?;
        if nodes.iter().any(|&n| n > 1000) {
            return Err(bad(
                location,
                &text,
                "node numbers above 1000 are not supported",
            ));
        }
        Ok(BusSpec { bus, nodes })
    }

    /// The nodes of `n_conductors` conductors: those written, then `defaults` for the rest
    /// when nothing was written, else ground (OpenDSS connects unnamed conductors to node 0).
    pub(crate) fn conductor_nodes(&self, defaults: &[usize]) -> Vec<usize> {
        if self.nodes.is_empty() {
            return defaults.to_vec();
        }
        (0..defaults.len())
            .map(|i| self.nodes.get(i).copied().unwrap_or(0))
            .collect()
    }
}

/// How a three-phase (or single-phase) element's windings or branches are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    Wye,
    Delta,
}

/// The voltage source behind `New Circuit.…` (a Thevenin equivalent at `bus1`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vsource {
    pub(crate) bus1: BusSpec,
    pub(crate) base_kv: f64,
    pub(crate) pu: f64,
    pub(crate) angle_deg: f64,
    /// Positive- and zero-sequence impedances (ohms).
    pub(crate) z1_ohm: (f64, f64),
    pub(crate) z0_ohm: (f64, f64),
}

/// Per-unit-length series impedance and shunt capacitance of a line, phase-frame matrices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LineImpedance {
    pub(crate) phases: usize,
    /// Row-major `phases × phases`, ohms per unit length.
    pub(crate) r: Vec<f64>,
    pub(crate) x: Vec<f64>,
    /// nF per unit length.
    pub(crate) c_nf: Vec<f64>,
    /// The length unit the values are per (`None`: the line's own length unit).
    pub(crate) units: Option<LengthUnit>,
}

/// Length units of OpenDSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LengthUnit {
    Mile,
    Kft,
    Km,
    M,
    Ft,
    Inch,
    Cm,
}

impl LengthUnit {
    fn parse(text: &str, location: &Location) -> Result<Option<LengthUnit>, GridError> {
        Ok(Some(match text.to_ascii_lowercase().as_str() {
            "none" => return Ok(None),
            "mi" => LengthUnit::Mile,
            "kft" => LengthUnit::Kft,
            "km" => LengthUnit::Km,
            "m" => LengthUnit::M,
            "ft" => LengthUnit::Ft,
            "in" => LengthUnit::Inch,
            "cm" => LengthUnit::Cm,
            _ => {
                return Err(bad(
                    location,
                    text,
                    "unknown length unit (none, mi, kft, km, m, ft, in, cm)",
                ))
            }
        }))
    }
    /// Metres in one unit.
    fn metres(self) -> f64 {
        match self {
            LengthUnit::Mile => 1609.344,
            LengthUnit::Kft => 304.8,
            LengthUnit::Km => 1000.0,
            LengthUnit::M => 1.0,
            LengthUnit::Ft => 0.3048,
            LengthUnit::Inch => 0.0254,
            LengthUnit::Cm => 0.01,
        }
    }
}

/// A line (or a switch written as a short line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) bus1: BusSpec,
    pub(crate) bus2: BusSpec,
    pub(crate) impedance: LineImpedance,
    /// Length in `length_units` (or in the impedance's units when those are `None`).
    pub(crate) length: f64,
    length_units: Option<LengthUnit>,
}

impl Line {
    /// Factor from the impedance's per-unit-length values to the line's totals.
    pub(crate) fn length_factor(&self) -> f64 {
        match (self.impedance.units, self.length_units) {
            (Some(per), Some(len)) => self.length * len.metres() / per.metres(),
            _ => self.length,
        }
    }
}

/// One winding of a two-winding transformer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Winding {
    pub(crate) bus: BusSpec,
    pub(crate) connection: Connection,
    /// Rated kV: line-to-line for 2- and 3-phase, the winding's own voltage for 1-phase.
    pub(crate) kv: f64,
    pub(crate) kva: f64,
    /// Winding resistance, percent on the winding's kVA.
    pub(crate) pct_r: f64,
    /// Per-unit tap.
    pub(crate) tap: f64,
}

/// A two-winding transformer (1- or 3-phase); regulators are transformers with taps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transformer {
    pub(crate) name: String,
    pub(crate) phases: usize,
    pub(crate) windings: [Winding; 2],
    /// Leakage reactance, percent on winding 1's kVA.
    pub(crate) xhl_pct: f64,
    pub(crate) pct_noload_loss: f64,
    pub(crate) pct_imag: f64,
    /// Anti-floating admittance, parts per million of the diagonal.
    pub(crate) ppm_antifloat: f64,
}

/// A regulator's control (read for its transformer and settings; the power flow moves taps
/// only when told).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegControl {
    pub(crate) name: String,
    pub(crate) transformer: String,
    pub(crate) winding: usize,
    pub(crate) vreg: f64,
    pub(crate) band: f64,
    pub(crate) pt_ratio: f64,
    pub(crate) ct_primary_a: f64,
    pub(crate) r_ldc: f64,
    pub(crate) x_ldc: f64,
}

/// A shunt capacitor bank.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Capacitor {
    pub(crate) name: String,
    pub(crate) bus1: BusSpec,
    pub(crate) phases: usize,
    pub(crate) connection: Connection,
    pub(crate) kvar: f64,
    /// Line-to-line for 2- and 3-phase banks, the can's rating for 1-phase.
    pub(crate) kv: f64,
}

/// OpenDSS load models this reader supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadModel {
    /// 1: constant P and Q inside [vminpu, vmaxpu].
    ConstantPq,
    /// 2: constant impedance.
    ConstantZ,
    /// 4: P ∝ V^cvrwatts, Q ∝ V^cvrvars.
    Exponential,
    /// 5: constant current magnitude.
    ConstantI,
}

/// A load.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Load {
    pub(crate) name: String,
    pub(crate) bus1: BusSpec,
    pub(crate) phases: usize,
    pub(crate) connection: Connection,
    pub(crate) model: LoadModel,
    /// Line-to-line for 2- and 3-phase loads, the element's own voltage for 1-phase.
    pub(crate) kv: f64,
    pub(crate) kw: f64,
    pub(crate) kvar: f64,
    pub(crate) vminpu: f64,
    pub(crate) vmaxpu: f64,
    pub(crate) vlowpu: f64,
    pub(crate) cvr_watts: f64,
    pub(crate) cvr_vars: f64,
}

/// A whole feeder as its script defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Feeder {
    pub(crate) path: PathBuf,
    pub name: String,
    pub(crate) base_frequency_hz: f64,
    pub(crate) source: Vsource,
    pub(crate) lines: Vec<Line>,
    pub(crate) transformers: Vec<Transformer>,
    pub(crate) regulators: Vec<RegControl>,
    pub(crate) capacitors: Vec<Capacitor>,
    pub(crate) loads: Vec<Load>,
    /// `Set VoltageBases` (kV line-to-line), used to give every bus its base.
    pub(crate) voltage_bases_kv: Vec<f64>,
    /// Whether the script runs `Solve` (its regulators then take the taps OpenDSS's static
    /// control chooses, see [`super::regulators`]).
    pub(crate) solves: bool,
}

impl Feeder {
    /// Reads and checks a feeder script (and the files it redirects to).
    pub fn read(path: &Path) -> Result<Feeder, GridError> {
        let commands = dss::read_script(path)?;
        build(path, &commands)
    }

    /// The transformer a regulator control acts on.
    pub(crate) fn regulator_transformer(&self, regulator: &str) -> Result<usize, GridError> {
        let name = regulator.to_ascii_lowercase();
        let known = || {
            self.regulators
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reg = self
            .regulators
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| GridError::UnknownRegulator {
                name: regulator.to_string(),
                known: known(),
            })?;
        self.transformers
            .iter()
            .position(|t| t.name == reg.transformer)
            .ok_or_else(|| GridError::UnknownRegulator {
                name: format!(
                    "{regulator} (its transformer {} is missing)",
                    reg.transformer
                ),
                known: known(),
            })
    }
}

fn bad(location: &Location, token: &str, what: impl Into<String>) -> GridError {
    GridError::parse(&location.file, location.line, token, what)
}

/// Objects in creation order with their properties as written.
#[derive(Default)]
struct Objects {
    order: Vec<(String, String)>,
    props: HashMap<(String, String), (Location, Vec<Param>)>,
    circuit: Option<(String, Location)>,
    voltage_bases: Vec<f64>,
    base_frequency_hz: Option<f64>,
    solves: bool,
}

fn build(path: &Path, commands: &[Command]) -> Result<Feeder, GridError> {
    let mut objects = Objects::default();
    for command in commands {
        apply_command(&mut objects, command)?;
    }
    let Some((circuit_name, circuit_location)) = objects.circuit.clone() else {
        return Err(GridError::parse(
            path,
            0,
            "",
            "the script defines no circuit (New Circuit.NAME …)",
        ));
    };
    let base_frequency_hz = objects.base_frequency_hz.unwrap_or(60.0);
    let mut feeder = Feeder {
        path: path.to_path_buf(),
        name: circuit_name,
        base_frequency_hz,
        source: Vsource {
            bus1: BusSpec {
                bus: "sourcebus".into(),
                nodes: vec![],
            },
            base_kv: 115.0,
            pu: 1.0,
            angle_deg: 0.0,
            z1_ohm: (0.0, 0.0),
            z0_ohm: (0.0, 0.0),
        },
        lines: vec![],
        transformers: vec![],
        regulators: vec![],
        capacitors: vec![],
        loads: vec![],
        voltage_bases_kv: objects.voltage_bases.clone(),
        solves: objects.solves,
    };
    interpret_objects(&objects, &mut feeder)?;
    check_regulators(&objects, &feeder)?;
    if feeder.voltage_bases_kv.is_empty() {
        return Err(bad(
            &circuit_location,
            "VoltageBases",
            "the script sets no voltage bases (Set VoltageBases=[…]); per-unit voltages need them",
        ));
    }
    Ok(feeder)
}

/// Every object, in creation order, as its typed element.
fn interpret_objects(objects: &Objects, feeder: &mut Feeder) -> Result<(), GridError> {
    let mut linecodes: HashMap<String, LineImpedance> = HashMap::new();
    for key in &objects.order {
        let (location, _) = &objects.props[key];
        let params = flatten(objects, key, 0)?;
        let (class, name) = (key.0.as_str(), key.1.clone());
        match class {
            "vsource" => feeder.source = vsource(&params, location)?,
            "linecode" => {
                linecodes.insert(name, linecode(&params)?);
            }
            "line" => feeder
                .lines
                .push(line(name, &params, &linecodes, location)?),
            "transformer" => feeder
                .transformers
                .push(transformer(name, &params, location)?),
            "regcontrol" => feeder.regulators.push(regcontrol(name, &params, location)?),
            "capacitor" => feeder.capacitors.push(capacitor(name, &params, location)?),
            "load" => feeder.loads.push(load(name, &params, location)?),
            other => {
                return Err(bad(
                    location,
                    other,
                    "unsupported element class (supported: Circuit/Vsource, Line, LineCode, \
                     Transformer, RegControl, Capacitor, Load)",
                ))
            }
        }
    }
    Ok(())
}

/// Every RegControl names a defined transformer.
fn check_regulators(objects: &Objects, feeder: &Feeder) -> Result<(), GridError> {
    for reg in &feeder.regulators {
        if !feeder
            .transformers
            .iter()
            .any(|t| t.name == reg.transformer)
        {
            let (location, _) = &objects.props[&("regcontrol".to_string(), reg.name.clone())];
            return Err(bad(
                location,
                &reg.transformer,
                format!(
                    "RegControl.{} names a transformer that is not defined",
                    reg.name
                ),
            ));
        }
    }
    Ok(())
}

fn apply_command(objects: &mut Objects, command: &Command) -> Result<(), GridError> {
    match &command.verb {
        Verb::Clear => *objects = Objects::default(),
        Verb::Set => {
            for p in &command.params {
                set_option(objects, p)?;
            }
        }
        Verb::New { class, name } => {
            let class = if class == "circuit" {
                objects.circuit = Some((name.clone(), command.location.clone()));
                "vsource".to_string()
            } else {
                class.clone()
            };
            let name = if objects.circuit.as_ref().map(|c| &c.1) == Some(&command.location)
                && class == "vsource"
            {
                "source".to_string()
            } else {
                name.clone()
            };
            let key = (class, name);
            if objects.props.contains_key(&key) {
                return Err(bad(
                    &command.location,
                    &format!("{}.{}", key.0, key.1),
                    "is defined twice (use Edit to change it)",
                ));
            }
            objects.order.push(key.clone());
            objects
                .props
                .insert(key, (command.location.clone(), command.params.clone()));
        }
        Verb::Edit { class, name } => {
            let key = (class.clone(), name.clone());
            match objects.props.get_mut(&key) {
                Some((_, props)) => props.extend(command.params.iter().cloned()),
                None => {
                    return Err(bad(
                        &command.location,
                        &format!("{class}.{name}"),
                        "Edit of an object that is not defined",
                    ))
                }
            }
        }
        Verb::Solve => objects.solves = true,
        Verb::CalcVoltageBases => {}
    }
    Ok(())
}

fn set_option(objects: &mut Objects, p: &Param) -> Result<(), GridError> {
    let Some(key) = p.key.as_deref() else {
        return Err(bad(&p.location, &p.value, "Set needs option=value"));
    };
    match key {
        "voltagebases" => {
            let v = dss::parse_numbers(&p.value)
                .filter(|v| !v.is_empty() && v.iter().all(|x| *x > 0.0))
                .ok_or_else(|| bad(&p.location, &p.value, "voltage bases must be positive kV"))?;
            objects.voltage_bases = v;
        }
        "defaultbasefrequency" | "defaultbasefreq" | "basefrequency" => {
            let f = number(p)?;
            if !(f > 0.0) {
                return Err(bad(&p.location, &p.value, "frequency must be positive"));
            }
            objects.base_frequency_hz = Some(f);
        }
        // Solution settings of an interactive session: the power flow sets its own.
        "mode" | "controlmode" | "maxiterations" | "maxiter" | "tolerance" | "maxcontroliter"
        | "stepsize" | "number" | "datapath" | "editor" | "algorithm" => {}
        other => {
            return Err(bad(
                &p.location,
                other,
                "unsupported Set option (supported: VoltageBases, DefaultBaseFrequency)",
            ))
        }
    }
    Ok(())
}

/// An object's properties with `like=` replaced by the named object's own.
fn flatten(
    objects: &Objects,
    key: &(String, String),
    depth: usize,
) -> Result<Vec<Param>, GridError> {
    let (location, props) = &objects.props[key];
    if depth > 8 {
        return Err(bad(location, "like", "like= chain longer than 8 (a loop?)"));
    }
    let mut out = Vec::with_capacity(props.len());
    for p in props {
        if p.key.as_deref() == Some("like") {
            let other = (key.0.clone(), p.value.to_ascii_lowercase());
            if !objects.props.contains_key(&other) {
                return Err(bad(
                    &p.location,
                    &p.value,
                    format!("like= names no {} defined before", key.0),
                ));
            }
            out.extend(flatten(objects, &other, depth + 1)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn key_of(p: &Param) -> Result<&str, GridError> {
    p.key.as_deref().ok_or_else(|| {
        bad(
            &p.location,
            &p.value,
            "positional properties are not supported; write property=value",
        )
    })
}

fn number(p: &Param) -> Result<f64, GridError> {
    dss::parse_number(&p.value).ok_or_else(|| bad(&p.location, &p.value, "is not a number"))
}

fn positive(p: &Param) -> Result<f64, GridError> {
    let x = number(p)?;
    if !(x > 0.0) {
        return Err(bad(&p.location, &p.value, "must be positive"));
    }
    Ok(x)
}

fn non_negative(p: &Param) -> Result<f64, GridError> {
    let x = number(p)?;
    if !(x >= 0.0) {
        return Err(bad(&p.location, &p.value, "must not be negative"));
    }
    Ok(x)
}

fn count(p: &Param, max: usize) -> Result<usize, GridError> {
    let x = number(p)?;
    if x.fract() != 0.0 || !(1.0..=max as f64).contains(&x) {
        return Err(bad(
            &p.location,
            &p.value,
            format!("must be a whole number from 1 to {max}"),
        ));
    }
    Ok(x as usize)
}

fn yes(p: &Param) -> Result<bool, GridError> {
    match p.value.to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "t" => Ok(true),
        "n" | "no" | "false" | "f" => Ok(false),
        _ => Err(bad(&p.location, &p.value, "expected yes or no")),
    }
}

fn connection(p: &Param) -> Result<Connection, GridError> {
    match p.value.to_ascii_lowercase().as_str() {
        "wye" | "y" | "ln" => Ok(Connection::Wye),
        "delta" | "d" | "ll" => Ok(Connection::Delta),
        _ => Err(bad(&p.location, &p.value, "expected wye or delta")),
    }
}

fn unsupported(p: &Param, class: &str) -> GridError {
    bad(
        &p.location,
        p.key.as_deref().unwrap_or(&p.value),
        format!("unsupported property of {class}"),
    )
}

fn check_base_frequency(p: &Param) -> Result<(), GridError> {
    let f = number(p)?;
    if (f - 60.0).abs() > 1e-9 && (f - 50.0).abs() > 1e-9 {
        return Err(bad(
            &p.location,
            &p.value,
            "base frequency must be 50 or 60 Hz",
        ));
    }
    Ok(())
}

/// Properties every element may carry that do not change a snapshot power flow.
const INERT: &[&str] = &[
    "normamps",
    "emergamps",
    "faultrate",
    "pctperm",
    "repair",
    "basefreq",
    "bank",
    "sub",
    "daily",
    "yearly",
    "duty",
    "spectrum",
    "enabled",
    "normhkva",
    "emerghkva",
    "maxtap",
    "mintap",
    "numtaps",
    "delay",
    "tapdelay",
    "maxtapchange",
    "debugtrace",
    "tapnum",
    "revband",
    "revvreg",
    "revr",
    "revx",
    "reversible",
    "ptphase",
    "vlimit",
    "seasons",
    "ratings",
    "faultrate",
];

fn inert(p: &Param, key: &str) -> Result<bool, GridError> {
    if !INERT.contains(&key) {
        return Ok(false);
    }
    if key == "basefreq" {
        check_base_frequency(p)?;
    }
    if key == "enabled" && !yes(p)? {
        return Err(bad(
            &p.location,
            &p.value,
            "disabled elements are not supported (remove the element instead)",
        ));
    }
    Ok(true)
}

fn vsource(params: &[Param], location: &Location) -> Result<Vsource, GridError> {
    let (mut base_kv, mut pu, mut angle) = (115.0, 1.0, 0.0);
    let (mut mvasc3, mut mvasc1, mut x1r1, mut x0r0) = (2000.0, 2100.0, 4.0, 3.0);
    let mut z = [None::<f64>; 4];
    let mut z_last = false;
    let mut bus1 = BusSpec {
        bus: "sourcebus".into(),
        nodes: vec![],
    };
    for p in params {
        let key = key_of(p)?;
        match key {
            "basekv" => base_kv = positive(p)?,
            "pu" => pu = positive(p)?,
            "angle" => angle = number(p)?,
            "mvasc3" => (mvasc3, z_last) = (positive(p)?, false),
            "mvasc1" => (mvasc1, z_last) = (positive(p)?, false),
            "x1r1" => x1r1 = positive(p)?,
            "x0r0" => x0r0 = positive(p)?,
            "r1" => (z[0], z_last) = (Some(non_negative(p)?), true),
            "x1" => (z[1], z_last) = (Some(non_negative(p)?), true),
            "r0" => (z[2], z_last) = (Some(non_negative(p)?), true),
            "x0" => (z[3], z_last) = (Some(non_negative(p)?), true),
            "bus1" => bus1 = BusSpec::parse(&p.value, &p.location)?,
            "phases" => {
                if count(p, 3)? != 3 {
                    return Err(bad(
                        &p.location,
                        &p.value,
                        "only a 3-phase source is supported",
                    ));
                }
            }
            "frequency" => check_base_frequency(p)?,
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "Vsource")),
        }
    }
    let (z1_ohm, z0_ohm) = if z_last {
        let [r1, x1, r0, x0] = z.map(|v| v.unwrap_or(0.0));
        if r1 == 0.0 && x1 == 0.0 {
            return Err(bad(location, "r1/x1", "the source's impedance is zero"));
        }
        ((r1, x1), (r0, x0))
    } else {
        short_circuit_impedance(base_kv, mvasc3, mvasc1, x1r1, x0r0)
    };
    Ok(Vsource {
        bus1,
        base_kv,
        pu,
        angle_deg: angle,
        z1_ohm,
        z0_ohm,
    })
}

/// Z1 and Z0 from the short-circuit MVA (OpenDSS's Vsource): |Z1| = kV²/MVAsc3 with X1/R1,
/// and Z0 (with X0/R0) such that |2·Z1 + Z0| = 3·kV²/MVAsc1.
fn short_circuit_impedance(
    base_kv: f64,
    mvasc3: f64,
    mvasc1: f64,
    x1r1: f64,
    x0r0: f64,
) -> ((f64, f64), (f64, f64)) {
    let z1 = base_kv * base_kv / mvasc3;
    let r1 = z1 / (1.0 + x1r1 * x1r1).sqrt();
    let x1 = r1 * x1r1;
    let zs_target = 3.0 * base_kv * base_kv / mvasc1;
    // (2r1 + r0)² + (2x1 + x0·)² = target², x0 = r0·x0r0: a quadratic in r0.
    let a = 1.0 + x0r0 * x0r0;
    let b = 4.0 * (r1 + x1 * x0r0);
    let c = 4.0 * (r1 * r1 + x1 * x1) - zs_target * zs_target;
    let r0 = ((-b + (b * b - 4.0 * a * c).max(0.0).sqrt()) / (2.0 * a)).max(0.0);
    ((r1, x1), (r0, r0 * x0r0))
}

/// OpenDSS's default line (ohms and nF per 1000 ft, written as per unit length with no unit).
fn default_impedance(phases: usize) -> Sym {
    let _ = phases;
    Sym {
        r1: 0.058,
        x1: 0.1206,
        r0: 0.1784,
        x0: 0.4047,
        c1: 3.4,
        c0: 1.6,
    }
}

#[derive(Debug, Clone, Copy)]
struct Sym {
    r1: f64,
    x1: f64,
    r0: f64,
    x0: f64,
    c1: f64,
    c0: f64,
}

impl Sym {
    /// Phase matrices: self (2·x1 + x0)/3, mutual (x0 − x1)/3; a 1-phase line takes the
    /// positive-sequence values (OpenDSS sets Z0 = Z1, C0 = C1 for one phase).
    fn matrices(&self, phases: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        if phases == 1 {
            return (vec![self.r1], vec![self.x1], vec![self.c1]);
        }
        let fill = |s1: f64, s0: f64| {
            let self_ = (2.0 * s1 + s0) / 3.0;
            let mutual = (s0 - s1) / 3.0;
            (0..phases * phases)
                .map(|k| {
                    if k / phases == k % phases {
                        self_
                    } else {
                        mutual
                    }
                })
                .collect::<Vec<f64>>()
        };
        (
            fill(self.r1, self.r0),
            fill(self.x1, self.x0),
            fill(self.c1, self.c0),
        )
    }
}

/// A line's or linecode's impedance as properties set it: symmetrical components or matrices.
#[derive(Debug, Clone)]
struct ImpedanceState {
    phases: usize,
    sym: Option<Sym>,
    r: Option<Vec<f64>>,
    x: Option<Vec<f64>>,
    c: Option<Vec<f64>>,
    units: Option<LengthUnit>,
}

impl ImpedanceState {
    fn new() -> Self {
        ImpedanceState {
            phases: 3,
            sym: Some(default_impedance(3)),
            r: None,
            x: None,
            c: None,
            units: None,
        }
    }
    fn from(code: &LineImpedance) -> Self {
        ImpedanceState {
            phases: code.phases,
            sym: None,
            r: Some(code.r.clone()),
            x: Some(code.x.clone()),
            c: Some(code.c_nf.clone()),
            units: code.units,
        }
    }
    /// Applies one impedance property; false when `key` is not one.
    fn apply(&mut self, key: &str, p: &Param) -> Result<bool, GridError> {
        match key {
            "r1" | "x1" | "r0" | "x0" | "c1" | "c0" => {
                let v = non_negative(p)?;
                if self.sym.is_none() {
                    self.sym = Some(default_impedance(self.phases));
                    (self.r, self.x, self.c) = (None, None, None);
                }
                if let Some(s) = self.sym.as_mut() {
                    match key {
                        "r1" => s.r1 = v,
                        "x1" => s.x1 = v,
                        "r0" => s.r0 = v,
                        "x0" => s.x0 = v,
                        "c1" => s.c1 = v,
                        _ => s.c0 = v,
                    }
                }
            }
            "rmatrix" | "xmatrix" | "cmatrix" => {
                let m = lower_triangle_matrix(p)?;
                if self.sym.is_some() {
                    let (r, x, c) = self.sym.take().unwrap().matrices(self.phases);
                    (self.r, self.x, self.c) = (Some(r), Some(x), Some(c));
                }
                let n = (m.len() as f64).sqrt() as usize;
                self.phases = n;
                match key {
                    "rmatrix" => self.r = Some(m),
                    "xmatrix" => self.x = Some(m),
                    _ => self.c = Some(m),
                }
            }
            "units" => self.units = LengthUnit::parse(&p.value, &p.location)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    /// OpenDSS's switch impedance (`switch=yes`): r1 = x1 = r0 = x0 = 1, c1 = 1.1, c0 = 1,
    /// replacing any matrices.
    fn make_switch(&mut self) {
        self.sym = Some(Sym {
            r1: 1.0,
            x1: 1.0,
            r0: 1.0,
            x0: 1.0,
            c1: 1.1,
            c0: 1.0,
        });
        (self.r, self.x, self.c, self.units) = (None, None, None, None);
    }
    fn finish(&self, location: &Location) -> Result<LineImpedance, GridError> {
        let n = self.phases;
        let (r, x, c) = match self.sym {
            Some(s) => s.matrices(n),
            None => {
                let zero = vec![0.0; n * n];
                (
                    self.r.clone().unwrap_or_else(|| zero.clone()),
                    self.x.clone().unwrap_or_else(|| zero.clone()),
                    self.c.clone().unwrap_or(zero),
                )
            }
        };
        if r.len() != n * n || x.len() != n * n || c.len() != n * n {
            return Err(bad(
                location,
                "rmatrix/xmatrix/cmatrix",
                format!("matrices disagree with {n} phases"),
            ));
        }
        Ok(LineImpedance {
            phases: n,
            r,
            x,
            c_nf: c,
            units: self.units,
        })
    }
}

/// `(a | b c | d e f)` (lower triangle) or a full `n × n` list → a full row-major matrix.
fn lower_triangle_matrix(p: &Param) -> Result<Vec<f64>, GridError> {
    let v = dss::parse_numbers(&p.value)
        .ok_or_else(|| bad(&p.location, &p.value, "matrix entries must be numbers"))?;
    let len = v.len();
    let full = (len as f64).sqrt().round() as usize;
    if full * full == len && !p.value.contains('|') || len == 1 {
        return Ok(v);
    }
    let n = ((((8 * len + 1) as f64).sqrt() - 1.0) / 2.0).round() as usize;
    if n * (n + 1) / 2 != len || n == 0 || n > 16 {
        return Err(bad(
            &p.location,
            &p.value,
            "a matrix must be a lower triangle (1 | 2 3 | 4 5 6) or n×n values",
        ));
    }
    let mut m = vec![0.0; n * n];
    let mut k = 0;
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = v[k];
            m[j * n + i] = v[k];
            k += 1;
        }
    }
    Ok(m)
}

fn linecode(params: &[Param]) -> Result<LineImpedance, GridError> {
    let mut state = ImpedanceState::new();
    let mut location = None;
    for p in params {
        let key = key_of(p)?;
        location.get_or_insert_with(|| p.location.clone());
        if state.apply(key, p)? {
            continue;
        }
        match key {
            "nphases" => state.phases = count(p, 16)?,
            "kron" | "neutral" => return Err(unsupported(p, "LineCode (Kron reduction)")),
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "LineCode")),
        }
    }
    let location = location.unwrap_or(Location {
        file: PathBuf::new(),
        line: 0,
    });
    state.finish(&location)
}

fn line(
    name: String,
    params: &[Param],
    linecodes: &HashMap<String, LineImpedance>,
    location: &Location,
) -> Result<Line, GridError> {
    let mut state = ImpedanceState::new();
    let (mut bus1, mut bus2) = (None, None);
    let mut length = 1.0;
    let mut length_units: Option<LengthUnit> = None;
    let mut phases_set: Option<(usize, Location)> = None;
    for p in params {
        let key = key_of(p)?;
        match key {
            "bus1" => bus1 = Some(BusSpec::parse(&p.value, &p.location)?),
            "bus2" => bus2 = Some(BusSpec::parse(&p.value, &p.location)?),
            "length" => length = positive(p)?,
            "units" => length_units = LengthUnit::parse(&p.value, &p.location)?,
            "phases" => {
                let n = count(p, 16)?;
                phases_set = Some((n, p.location.clone()));
                if state.sym.is_some() {
                    state.phases = n;
                }
            }
            "linecode" => state = ImpedanceState::from(linecode_named(p, linecodes)?),
            "switch" => {
                if yes(p)? {
                    state.make_switch();
                    length = 0.001;
                    length_units = None;
                }
            }
            _ if state.apply(key, p)? => {
                if key == "units" {
                    // `units` on a line names the length's unit, not the impedance's.
                    state.units = state.units.or(length_units);
                }
            }
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "Line")),
        }
    }
    let impedance = state.finish(location)?;
    if let Some((n, loc)) = phases_set {
        check_line_phases(n, &loc, &impedance)?;
    }
    let bus1 = bus1.ok_or_else(|| bad(location, &name, "Line has no bus1"))?;
    let bus2 = bus2.ok_or_else(|| bad(location, &name, "Line has no bus2"))?;
    Ok(Line {
        name,
        bus1,
        bus2,
        impedance,
        length,
        length_units,
    })
}

/// The LineCode a Line's `linecode` names (defined earlier in the script).
fn linecode_named<'a>(
    p: &Param,
    linecodes: &'a HashMap<String, LineImpedance>,
) -> Result<&'a LineImpedance, GridError> {
    linecodes.get(&p.value.to_ascii_lowercase()).ok_or_else(|| {
        bad(
            &p.location,
            &p.value,
            "LineCode not defined before this line",
        )
    })
}

/// A Line's `phases` (`n`, written at `loc`) must agree with its impedance's.
fn check_line_phases(n: usize, loc: &Location, impedance: &LineImpedance) -> Result<(), GridError> {
    if n != impedance.phases {
        return Err(bad(
            loc,
            &n.to_string(),
            format!(
                "phases disagrees with the line's impedance ({} phases)",
                impedance.phases
            ),
        ));
    }
    Ok(())
}

fn transformer(
    name: String,
    params: &[Param],
    location: &Location,
) -> Result<Transformer, GridError> {
    let default_winding = Winding {
        bus: BusSpec {
            bus: String::new(),
            nodes: vec![],
        },
        connection: Connection::Wye,
        kv: 12.47,
        kva: 1000.0,
        pct_r: 0.2,
        tap: 1.0,
    };
    let mut t = Transformer {
        name,
        phases: 3,
        windings: [default_winding.clone(), default_winding],
        xhl_pct: 7.0,
        pct_noload_loss: 0.0,
        pct_imag: 0.0,
        ppm_antifloat: 1.0,
    };
    let mut active = 0usize;
    let mut buses_set = [false, false];
    for p in params {
        let key = key_of(p)?;
        if winding_property(key, p, &mut t.windings, active, &mut buses_set)? {
            continue;
        }
        match key {
            "phases" => t.phases = count(p, 3)?,
            "windings" => {
                if count(p, 3)? != 2 {
                    return Err(bad(
                        &p.location,
                        &p.value,
                        "only two-winding transformers are supported",
                    ));
                }
            }
            "wdg" => active = count(p, 2)? - 1,
            "xhl" | "x12" => t.xhl_pct = positive(p)?,
            "%loadloss" => {
                let r = non_negative(p)? / 2.0;
                t.windings[0].pct_r = r;
                t.windings[1].pct_r = r;
            }
            "%noloadloss" => t.pct_noload_loss = non_negative(p)?,
            "%imag" => t.pct_imag = non_negative(p)?,
            "ppm_antifloat" | "ppm" => t.ppm_antifloat = non_negative(p)?,
            "xht" | "xlt" | "x13" | "x23" | "xfmrcode" | "xscarray" => {
                return Err(unsupported(p, "Transformer (two windings, no XfmrCode)"))
            }
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "Transformer")),
        }
    }
    if let Some(k) = buses_set.iter().position(|set| !set) {
        return Err(bad(
            location,
            &t.name,
            format!("Transformer has no bus for winding {}", k + 1),
        ));
    }
    Ok(t)
}

/// A property of the active winding (`bus`, `conn`, `kv`, `kva`, `%r`, `tap`) or of both
/// (`buses`, `conns`, `kvs`, `kvas`, `taps`, `%rs`); false when `key` is neither.
fn winding_property(
    key: &str,
    p: &Param,
    w: &mut [Winding; 2],
    active: usize,
    buses_set: &mut [bool; 2],
) -> Result<bool, GridError> {
    let per_winding = |p: &Param| -> Result<Vec<Param>, GridError> {
        let words = dss::parse_words(&p.value);
        if words.len() != 2 {
            return Err(bad(
                &p.location,
                &p.value,
                "expected one value per winding (two windings)",
            ));
        }
        Ok(words
            .into_iter()
            .map(|v| Param {
                key: p.key.clone(),
                value: v,
                location: p.location.clone(),
            })
            .collect())
    };
    let (targets, single): (Vec<(usize, Param)>, &str) = match key {
        "bus" | "conn" | "kv" | "kva" | "%r" | "r" | "tap" => (vec![(active, p.clone())], key),
        "buses" | "conns" | "kvs" | "kvas" | "taps" | "%rs" => (
            per_winding(p)?.into_iter().enumerate().collect(),
            match key {
                "buses" => "bus",
                "conns" => "conn",
                "kvs" => "kv",
                "kvas" => "kva",
                "taps" => "tap",
                _ => "%r",
            },
        ),
        _ => return Ok(false),
    };
    for (k, q) in targets {
        match single {
            "bus" => {
                w[k].bus = BusSpec::parse(&q.value, &q.location)?;
                buses_set[k] = true;
            }
            "conn" => w[k].connection = connection(&q)?,
            "kv" => w[k].kv = positive(&q)?,
            "kva" => w[k].kva = positive(&q)?,
            "tap" => w[k].tap = positive(&q)?,
            _ => w[k].pct_r = non_negative(&q)?,
        }
    }
    Ok(true)
}

fn regcontrol(
    name: String,
    params: &[Param],
    location: &Location,
) -> Result<RegControl, GridError> {
    let mut reg = RegControl {
        name,
        transformer: String::new(),
        winding: 2,
        vreg: 120.0,
        band: 3.0,
        pt_ratio: 60.0,
        ct_primary_a: 300.0,
        r_ldc: 0.0,
        x_ldc: 0.0,
    };
    for p in params {
        let key = key_of(p)?;
        match key {
            "transformer" => reg.transformer = p.value.to_ascii_lowercase(),
            "winding" => reg.winding = count(p, 2)?,
            "vreg" => reg.vreg = positive(p)?,
            "band" => reg.band = positive(p)?,
            "ptratio" => reg.pt_ratio = positive(p)?,
            "ctprim" => reg.ct_primary_a = positive(p)?,
            "r" => reg.r_ldc = number(p)?,
            "x" => reg.x_ldc = number(p)?,
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "RegControl")),
        }
    }
    if reg.transformer.is_empty() {
        return Err(bad(location, &reg.name, "RegControl names no transformer"));
    }
    Ok(reg)
}

fn capacitor(name: String, params: &[Param], location: &Location) -> Result<Capacitor, GridError> {
    let mut cap = Capacitor {
        name,
        bus1: BusSpec {
            bus: String::new(),
            nodes: vec![],
        },
        phases: 3,
        connection: Connection::Wye,
        kvar: 1200.0,
        kv: 12.47,
    };
    for p in params {
        let key = key_of(p)?;
        match key {
            "bus1" => cap.bus1 = BusSpec::parse(&p.value, &p.location)?,
            "phases" => cap.phases = count(p, 3)?,
            "conn" => cap.connection = connection(p)?,
            "kvar" => cap.kvar = non_negative(p)?,
            "kv" => cap.kv = positive(p)?,
            "numsteps" => {
                if count(p, 1)? != 1 {
                    return Err(unsupported(p, "Capacitor (one step)"));
                }
            }
            "bus2" => return Err(unsupported(p, "Capacitor (bus2: series capacitors)")),
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "Capacitor")),
        }
    }
    if cap.bus1.bus.is_empty() {
        return Err(bad(location, &cap.name, "Capacitor has no bus1"));
    }
    Ok(cap)
}

fn load(name: String, params: &[Param], location: &Location) -> Result<Load, GridError> {
    let mut l = Load {
        name,
        bus1: BusSpec {
            bus: String::new(),
            nodes: vec![],
        },
        phases: 3,
        connection: Connection::Wye,
        model: LoadModel::ConstantPq,
        kv: 12.47,
        kw: 10.0,
        kvar: 0.0,
        vminpu: 0.95,
        vmaxpu: 1.05,
        vlowpu: 0.50,
        cvr_watts: 1.0,
        cvr_vars: 2.0,
    };
    // kvar follows pf (0.88 by default) until kvar is given; the last of the two wins.
    let mut pf: Option<f64> = Some(0.88);
    for p in params {
        let key = key_of(p)?;
        match key {
            "bus1" => l.bus1 = BusSpec::parse(&p.value, &p.location)?,
            "phases" => l.phases = count(p, 3)?,
            "conn" => l.connection = connection(p)?,
            "model" => l.model = load_model(p)?,
            "kv" => l.kv = positive(p)?,
            "kw" => l.kw = number(p)?,
            "kvar" => {
                l.kvar = number(p)?;
                pf = None;
            }
            "pf" => {
                let v = number(p)?;
                if !(v.abs() > 0.0 && v.abs() <= 1.0) {
                    return Err(bad(
                        &p.location,
                        &p.value,
                        "pf must be in (0, 1] (negative: leading)",
                    ));
                }
                pf = Some(v);
            }
            "vminpu" => l.vminpu = positive(p)?,
            "vmaxpu" => l.vmaxpu = positive(p)?,
            "vlowpu" => l.vlowpu = positive(p)?,
            "cvrwatts" => l.cvr_watts = number(p)?,
            "cvrvars" => l.cvr_vars = number(p)?,
            "status" | "class" | "vminnorm" | "vminemerg" | "growth" => {}
            _ if inert(p, key)? => {}
            _ => return Err(unsupported(p, "Load")),
        }
    }
    if let Some(pf) = pf {
        let tan = (1.0 / (pf * pf) - 1.0).max(0.0).sqrt();
        l.kvar = l.kw * tan * pf.signum();
    }
    check_load(l, location)
}

fn load_model(p: &Param) -> Result<LoadModel, GridError> {
    Ok(match count(p, 8)? {
        1 => LoadModel::ConstantPq,
        2 => LoadModel::ConstantZ,
        4 => LoadModel::Exponential,
        5 => LoadModel::ConstantI,
        _ => {
            return Err(bad(
                &p.location,
                &p.value,
                "unsupported load model (supported: 1, 2, 4, 5)",
            ))
        }
    })
}

/// A load has a bus and vlowpu < vminpu < vmaxpu.
fn check_load(l: Load, location: &Location) -> Result<Load, GridError> {
    if l.bus1.bus.is_empty() {
        return Err(bad(location, &l.name, "Load has no bus1"));
    }
    if !(l.vlowpu < l.vminpu && l.vminpu < l.vmaxpu) {
        return Err(bad(
            location,
            &l.name,
            format!(
                "Load needs vlowpu < vminpu < vmaxpu (got {}, {}, {})",
                l.vlowpu, l.vminpu, l.vmaxpu
            ),
        ));
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Location {
        Location {
            file: PathBuf::from("x.dss"),
            line: 3,
        }
    }

    #[test]
    fn bus_spec_defaults_and_ground() {
        let b = BusSpec::parse("832.1", &loc()).unwrap();
        assert_eq!(b.conductor_nodes(&[1, 2]), vec![1, 0]);
        let b = BusSpec::parse("RG60", &loc()).unwrap();
        assert_eq!(b.bus, "rg60");
        assert_eq!(b.conductor_nodes(&[1, 2, 3, 0]), vec![1, 2, 3, 0]);
        assert!(BusSpec::parse("650.x", &loc()).is_err());
    }

    #[test]
    fn matrices_lower_triangle_and_sym() {
        let p = Param {
            key: Some("rmatrix".into()),
            value: "1 | 2 3".into(),
            location: loc(),
        };
        assert_eq!(lower_triangle_matrix(&p).unwrap(), vec![1.0, 2.0, 2.0, 3.0]);
        let s = Sym {
            r1: 1.0,
            x1: 0.0,
            r0: 4.0,
            x0: 0.0,
            c1: 0.0,
            c0: 0.0,
        };
        let (r, _, _) = s.matrices(2);
        assert_eq!(r, vec![2.0, 1.0, 1.0, 2.0]);
    }

    #[test]
    fn source_impedance_from_short_circuit_mva() {
        let ((r1, x1), (r0, x0)) = short_circuit_impedance(115.0, 20000.0, 21000.0, 4.0, 3.0);
        let z1 = (r1 * r1 + x1 * x1).sqrt();
        assert!((z1 - 115.0 * 115.0 / 20000.0).abs() < 1e-12);
        let zs = ((2.0 * r1 + r0).powi(2) + (2.0 * x1 + x0).powi(2)).sqrt();
        assert!((zs - 3.0 * 115.0 * 115.0 / 21000.0).abs() < 1e-9);
    }
}
