//! `cargo fuzz run ptx --features libfuzzer`: see [`vgpu_fuzz::ptx`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::ptx(data));
