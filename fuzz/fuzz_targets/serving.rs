//! Serving settings (`synthesize --serving`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serving.json");
    std::fs::write(&path, data).unwrap();
    let _ = powersynth::engine::ServingConfig::from_file(&path);
});
