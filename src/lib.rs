//! powersynth: realistic GPU power traces for LLM inference, from public and measured
//! benchmarks, for datacenter and grid studies.
//!
//! The crate is a pipeline of stages, each a module with a narrow API (see ARCHITECTURE.md):
//! [`sources`] read benchmark and measured data, [`fits`] turn them into curves and ITL
//! mixtures, [`traces`] builds power traces and simulation templates, [`store`] keeps the
//! artifacts on disk, [`table`] writes columnar files, and [`pipeline`] wires the stages for
//! `build-dataset`, reporting through [`progress::Progress`].
//!
//! ```
//! use powersynth::fits::logistic;
//! let x: Vec<f64> = [8u32, 16, 32, 64, 128].iter().map(|&b| (b as f64).log2()).collect();
//! let power_w = [300.0, 330.0, 400.0, 480.0, 520.0];
//! let report = logistic::fit(&x, &power_w);
//! assert!(report.sse <= report.grid_sse);
//! ```

// `!(x > 0.0)` is how input checks reject NaN along with non-positive values: intended.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
// Column-building code uses local tuples of column vectors; naming each would add noise.
#![allow(clippy::type_complexity)]

pub mod cli;
pub mod coordinator;
pub mod datacenter;
pub mod engine;
pub mod error;
pub mod fits;
pub(crate) mod gpus;
pub mod grid;
pub mod io;
pub mod learn;
pub(crate) mod level_map;
pub mod metrics;
pub mod pipeline;
pub(crate) mod plot;
pub mod prefix_cache;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod shard;
pub mod site;
pub mod sources;
pub mod spec;
pub mod stats;
pub mod store;
pub mod synth;
pub mod table;
pub(crate) mod thermal;
pub mod traces;
pub mod transfer;
pub mod validate;
pub mod workload;

pub use error::{Error, HubError, Result};
