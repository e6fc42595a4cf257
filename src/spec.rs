//! Model specifications: which benchmark runs describe one served model, and under which
//! stable name its fitted artifacts are cached.
//!
//! ```
//! use powersynth::spec::InferenceModelSpec;
//! let spec = InferenceModelSpec::builder("Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "H100", "lm-arena-chat")
//!     .batch_sizes(vec![8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768])
//!     .itl_deadline_s(0.08)
//!     .build()
//!     .unwrap();
//! assert_eq!(spec.cache_hash(), "8b03390326cb04d7"); // same directory name as the Python peer
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One served model: the ML.ENERGY runs it is fitted from and its simulation-time knobs.
///
/// Construct it with [`InferenceModelSpec::builder`] or deserialize it and call
/// [`InferenceModelSpec::validate`]; an invalid spec names the offending field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceModelSpec {
    /// Unique label within a workload (not part of the cache hash).
    pub(crate) model_label: String,
    /// Hugging Face model id, `org/name`.
    pub(crate) model_id: String,
    /// GPU model as the benchmark spells it, e.g. `H100` (case-sensitive).
    pub(crate) gpu_model: String,
    /// Benchmark task, e.g. `lm-arena-chat`.
    pub task: String,
    #[serde(default = "default_precision")]
    pub(crate) precision: String,
    /// GPUs per replica = the run's `num_gpus`.
    #[serde(default = "one")]
    pub(crate) gpus_per_replica: u32,
    #[serde(default = "one")]
    pub tensor_parallel: u32,
    #[serde(default = "one")]
    expert_parallel: u32,
    /// ITL deadline used by controllers (s, > 0; not part of the cache hash).
    #[serde(default = "default_deadline")]
    pub(crate) itl_deadline_s: f64,
    /// Batch sizes (`max_num_seqs`) whose runs are loaded.
    pub(crate) batch_sizes: Vec<u32>,
    /// Batch sizes a controller may choose; defaults to `batch_sizes`.
    #[serde(default)]
    pub(crate) feasible_batch_sizes: Vec<u32>,
    /// Batch sizes left out of the logistic fits (still loaded for traces and ITL).
    #[serde(default)]
    pub(crate) fit_exclude_batch_sizes: Vec<u32>,
}

fn default_precision() -> String {
    "bfloat16".to_string()
}
fn one() -> u32 {
    1
}
fn default_deadline() -> f64 {
    0.1
}

/// Builder for [`InferenceModelSpec`]; `build` validates.
pub struct SpecBuilder(InferenceModelSpec);

impl SpecBuilder {
    pub fn batch_sizes(mut self, b: Vec<u32>) -> Self {
        self.0.batch_sizes = b;
        self
    }
    pub fn feasible_batch_sizes(mut self, b: Vec<u32>) -> Self {
        self.0.feasible_batch_sizes = b;
        self
    }
    pub fn gpus_per_replica(mut self, g: u32) -> Self {
        self.0.gpus_per_replica = g;
        self
    }
    pub(crate) fn tensor_parallel(mut self, tp: u32) -> Self {
        self.0.tensor_parallel = tp;
        self
    }
    pub fn itl_deadline_s(mut self, d: f64) -> Self {
        self.0.itl_deadline_s = d;
        self
    }
    pub fn build(mut self) -> Result<InferenceModelSpec> {
        self.0.validate()?;
        if self.0.feasible_batch_sizes.is_empty() {
            self.0.feasible_batch_sizes = self.0.batch_sizes.clone();
        }
        Ok(self.0)
    }
}

impl InferenceModelSpec {
    pub fn builder(model_label: &str, model_id: &str, gpu_model: &str, task: &str) -> SpecBuilder {
        SpecBuilder(InferenceModelSpec {
            model_label: model_label.to_string(),
            model_id: model_id.to_string(),
            gpu_model: gpu_model.to_string(),
            task: task.to_string(),
            precision: default_precision(),
            gpus_per_replica: 1,
            tensor_parallel: 1,
            expert_parallel: 1,
            itl_deadline_s: default_deadline(),
            batch_sizes: Vec::new(),
            feasible_batch_sizes: Vec::new(),
            fit_exclude_batch_sizes: Vec::new(),
        })
    }

    /// Checks every field; fills `feasible_batch_sizes` from `batch_sizes` when empty.
    pub(crate) fn validate(&mut self) -> Result<()> {
        let who = |f: &str| format!("{} of model {:?}", f, self.model_label);
        if self.model_label.trim().is_empty() {
            return Err(Error::config("model_label", "must not be empty"));
        }
        for (name, v) in [
            ("model_id", &self.model_id),
            ("gpu_model", &self.gpu_model),
            ("task", &self.task),
        ] {
            if v.trim().is_empty() {
                return Err(Error::config(who(name), "must not be empty"));
            }
        }
        for (name, v) in [
            ("gpus_per_replica", self.gpus_per_replica),
            ("tensor_parallel", self.tensor_parallel),
            ("expert_parallel", self.expert_parallel),
        ] {
            if v < 1 {
                return Err(Error::config(who(name), format!("{v} (must be ≥ 1)")));
            }
        }
        if !(self.itl_deadline_s.is_finite() && self.itl_deadline_s > 0.0) {
            return Err(Error::config(
                who("itl_deadline_s"),
                format!("{} (must be > 0)", self.itl_deadline_s),
            ));
        }
        if self.batch_sizes.is_empty() {
            return Err(Error::config(who("batch_sizes"), "must not be empty"));
        }
        if let Some(b) = self.batch_sizes.iter().find(|&&b| b == 0) {
            return Err(Error::config(
                who("batch_sizes"),
                format!("{b} (must be ≥ 1)"),
            ));
        }
        if self.feasible_batch_sizes.is_empty() {
            self.feasible_batch_sizes = self.batch_sizes.clone();
        }
        if let Some(b) = self
            .feasible_batch_sizes
            .iter()
            .find(|b| !self.batch_sizes.contains(b))
        {
            return Err(Error::config(
                who("feasible_batch_sizes"),
                format!("{b} is not one of batch_sizes {:?}", self.batch_sizes),
            ));
        }
        Ok(())
    }

    /// First 16 hex digits of SHA-256 over the fields that determine the fitted data, serialised
    /// exactly as Python's `json.dumps(payload, sort_keys=True)`: the same spec gets the same
    /// directory name here, on another machine, and in the Python peer (`openg2g` 0.2).
    pub fn cache_hash(&self) -> String {
        let sorted = |v: &[u32]| -> String {
            let mut v = v.to_vec();
            v.sort_unstable();
            let items: Vec<String> = v.iter().map(|b| b.to_string()).collect();
            format!("[{}]", items.join(", "))
        };
        let blob = format!(
            "{{\"batch_sizes\": {}, \"expert_parallel\": {}, \"fit_exclude_batch_sizes\": {}, \
             \"gpu_model\": {}, \"gpus_per_replica\": {}, \"model_id\": {}, \"precision\": {}, \
             \"task\": {}, \"tensor_parallel\": {}}}",
            sorted(&self.batch_sizes),
            self.expert_parallel,
            sorted(&self.fit_exclude_batch_sizes),
            python_json_str(&self.gpu_model),
            self.gpus_per_replica,
            python_json_str(&self.model_id),
            python_json_str(&self.precision),
            python_json_str(&self.task),
            self.tensor_parallel,
        );
        let digest = Sha256::digest(blob.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A string as Python's `json.dumps` writes it with `ensure_ascii=True`.
pub(crate) fn python_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks that a workload's model labels are unique.
pub(crate) fn check_unique_labels(specs: &[InferenceModelSpec]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for s in specs {
        if !seen.insert(s.model_label.as_str()) {
            return Err(Error::config(
                "model_label",
                format!("duplicate label {:?}", s.model_label),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> InferenceModelSpec {
        InferenceModelSpec::builder(
            "Llama-3.1-8B",
            "meta-llama/Llama-3.1-8B-Instruct",
            "H100",
            "lm-arena-chat",
        )
        .batch_sizes(vec![8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768])
        .build()
        .unwrap()
    }

    #[test]
    fn cache_hash_matches_python_peer() {
        // Test vector computed with openg2g 0.2.0.post1 (peer spec §1.7, §9).
        assert_eq!(llama().cache_hash(), "8b03390326cb04d7");
    }

    #[test]
    fn cache_hash_ignores_label_and_batch_order() {
        let mut a = llama();
        a.model_label = "other".into();
        a.batch_sizes.reverse();
        assert_eq!(a.cache_hash(), "8b03390326cb04d7");
        a.task = "gpqa".into();
        assert_ne!(a.cache_hash(), "8b03390326cb04d7");
    }

    #[test]
    fn python_escaping_of_non_ascii() {
        assert_eq!(python_json_str("é\"x"), "\"\\u00e9\\\"x\"");
        assert_eq!(python_json_str("😀"), "\"\\ud83d\\ude00\"");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let e = InferenceModelSpec::builder("m", "o/m", "H100", "t")
            .batch_sizes(vec![8, 16])
            .feasible_batch_sizes(vec![32])
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feasible_batch_sizes") && e.contains("32"),
            "{e}"
        );
        let e = InferenceModelSpec::builder("m", "o/m", "H100", "t")
            .batch_sizes(vec![8])
            .itl_deadline_s(0.0)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("itl_deadline_s"), "{e}");
        let e = InferenceModelSpec::builder("m", "o/m", "H100", "t")
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sizes"), "{e}");
    }

    #[test]
    fn duplicate_labels_rejected() {
        let e = check_unique_labels(&[llama(), llama()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate label \"Llama-3.1-8B\""), "{e}");
    }
}
