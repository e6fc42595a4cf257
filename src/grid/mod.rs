//! The distribution grid (`../shared/GRID.md`): an OpenDSS feeder read natively
//! ([`dss`] → [`feeder`]), its nodal admittance model ([`network`]) and the three-phase
//! unbalanced power flow ([`powerflow`]: fixed-point current injection on a sparse LU factorised
//! once per topology or tap change, warm-started between steps).
//!
//! Data flows one way: script text → [`dss::Command`]s → [`feeder::Feeder`] (typed elements,
//! every value checked where it was written) → [`network::Network`] (nodes, element admittance
//! matrices, loads) → [`powerflow::PowerFlow`] (factorised Y, solutions).

pub mod component;
pub(crate) mod dss;
pub mod feeder;
pub mod network;
pub mod powerflow;
pub(crate) mod regulators;
pub mod sensitivity;
pub mod setup;
pub mod storage;

use std::path::{Path, PathBuf};

/// Errors of the grid: each names the file and line, the bus or element, or the solver state.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// A feeder file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed or unsupported piece of a feeder script.
    #[error("{}, line {line}: `{token}`: {what}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        token: String,
        what: String,
    },
    /// A bus named on the command line or in a scenario is not in the feeder.
    #[error("unknown bus `{bus}` ({context}); the feeder has {known}")]
    UnknownBus {
        bus: String,
        context: String,
        known: String,
    },
    /// A regulator named on the command line or in a scenario is not in the feeder.
    #[error("unknown regulator `{name}`; the feeder's regulators are {known}")]
    UnknownRegulator { name: String, known: String },
    /// The fixed-point iteration did not reach its tolerance.
    #[error(
        "power flow did not converge after {iterations} iterations: worst voltage change \
         {worst_change_pu:.3e} pu at node {worst_node} (tolerance {tolerance_pu:.1e}); \
         the loads may be beyond what the feeder can carry"
    )]
    NotConverged {
        iterations: usize,
        worst_change_pu: f64,
        worst_node: String,
        tolerance_pu: f64,
    },
    /// The admittance matrix could not be factorised (an island with no voltage reference).
    #[error("the feeder's admittance matrix is singular: {what}")]
    Singular { what: String },
    /// A value outside its domain (negative power, pf outside (0, 1], …).
    #[error("invalid {field}: {what}")]
    Invalid { field: String, what: String },
}

impl GridError {
    pub(crate) fn parse(
        path: &Path,
        line: usize,
        token: &str,
        what: impl Into<String>,
    ) -> GridError {
        GridError::Parse {
            path: path.to_path_buf(),
            line,
            token: token.to_string(),
            what: what.into(),
        }
    }
    pub(crate) fn invalid(field: impl Into<String>, what: impl Into<String>) -> GridError {
        GridError::Invalid {
            field: field.into(),
            what: what.into(),
        }
    }
}
