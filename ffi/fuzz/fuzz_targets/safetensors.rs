//! Fuzz target `safetensors`: see `effnet_c::fuzzing::safetensors` (ffi/src/fuzzing.rs) and FUZZING.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| effnet_c::fuzzing::safetensors(data));
