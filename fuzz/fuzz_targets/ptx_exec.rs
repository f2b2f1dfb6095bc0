//! `cargo fuzz run ptx_exec --features libfuzzer`: see [`vgpu_fuzz::ptx_exec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::ptx_exec(data));
