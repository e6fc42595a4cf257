//! A pipeline file (`build-dataset --pipeline`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, data).unwrap();
    let _ = powersynth::pipeline::PipelineConfig::from_file(&path);
});
