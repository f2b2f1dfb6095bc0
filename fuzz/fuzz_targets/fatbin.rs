//! `cargo fuzz run fatbin --features libfuzzer`: see [`vgpu_fuzz::fatbin`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::fatbin(data));
