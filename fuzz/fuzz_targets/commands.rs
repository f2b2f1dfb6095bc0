//! `cargo fuzz run commands --features libfuzzer`: see [`vgpu_fuzz::commands`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::commands(data));
