//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data/<sub>` beside the checkout. CI always has it (`CI=true` makes its absence a
/// failure); elsewhere a test that needs it is skipped with a note.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(sub);
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

pub struct Quiet;
impl powersynth::progress::Progress for Quiet {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self, _: &str) {}
}

/// The measured run (its folder under `../shared/data/measured`) whose path contains `part`;
/// `None` where the data is absent (see [`shared`]).
pub fn measured_run(part: &str) -> Option<PathBuf> {
    let root = shared("measured")?;
    let found = powersynth::sources::measured::discover_runs(&root)
        .unwrap()
        .into_iter()
        .find(|d| d.to_string_lossy().contains(part));
    Some(found.unwrap_or_else(|| panic!("no measured run matches {part:?}")))
}
