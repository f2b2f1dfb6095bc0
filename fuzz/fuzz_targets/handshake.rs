//! `cargo fuzz run handshake --features libfuzzer`: see [`vgpu_fuzz::handshake`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::handshake(data));
