//! Arbitrary bytes as a GGUF file: the reader, then (when it accepts them) the model's
//! config and weights must return `Ok` or `Err`, never panic, abort or hang.
#![no_main]

use glm_flash::config::Config;
use glm_flash::gguf::GgufFile;
use glm_flash::weights::Weights;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_vec("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let Ok(cfg) = Config::from_gguf(&file) else {
        return;
    };
    let _ = Weights::from_gguf(&file, &cfg);
});
