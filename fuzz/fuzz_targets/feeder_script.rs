//! An OpenDSS script: read, and when it reads, prepared and solved once.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feeder.dss");
    std::fs::write(&path, data).unwrap();
    if let Ok(feeder) = powersynth::grid::feeder::Feeder::read(&path) {
        if let Ok(mut grid) =
            powersynth::grid::setup::PreparedGrid::new(feeder, &Default::default())
        {
            let _ = grid.flow.solve();
        }
    }
});
