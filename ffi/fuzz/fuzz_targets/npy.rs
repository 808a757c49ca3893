//! Fuzz target `npy`: see `effnet_c::fuzzing::npy` (ffi/src/fuzzing.rs) and FUZZING.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| effnet_c::fuzzing::npy(data));
