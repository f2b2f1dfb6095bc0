//! `cargo fuzz run modules --features libfuzzer`: see [`vgpu_fuzz::modules`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::modules(data));
