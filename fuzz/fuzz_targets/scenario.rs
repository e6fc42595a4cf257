//! A scenario file: parsed, and when it parses, built (never run: a build checks every size).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, data).unwrap();
    if let Ok(sc) = powersynth::scenario::Scenario::from_file(&path) {
        let _ = powersynth::scenario::build(&sc, dir.path(), &Default::default());
    }
});
