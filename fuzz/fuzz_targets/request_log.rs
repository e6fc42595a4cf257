//! A vLLM request log (`requests.json` / `requests_summary.json`) and the workload made of it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests_summary.json");
    std::fs::write(&path, data).unwrap();
    let _ = powersynth::workload::Workload::from_request_log(&path);
});
