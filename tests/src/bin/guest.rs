//! `vgpu-test-guest SOCKET`: a guest in its own process, for the kill-the-guest test.
//!
//! It connects to the mediator at SOCKET, allocates 64 MiB of device memory, fills it through
//! the window and checks a sample back, prints `ready <device address>` and then waits until its
//! standard input closes (so it never outlives a test that died without killing it).

use std::io::{Read, Write};

use vgpu_transport::wire::Call;
use vgpu_transport::{Client, ClientConfig};

const SIZE: usize = 64 << 20;

fn main() {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: vgpu-test-guest SOCKET");
        std::process::exit(2);
    };
    let c = Client::connect(&socket, ClientConfig::default()).unwrap_or_else(|e| {
        eprintln!("vgpu-test-guest: {e}");
        std::process::exit(1);
    });
    let [ptr, _] = c.call_blocking(Call::MemAlloc, 0, [SIZE as u64, 0, 0, 0, 0, 0]).expect("MemAlloc");
    let data = vgpu_tests::pattern(64, SIZE);
    c.copy_to_device(ptr, &data, 0).expect("copy_to_device");
    let mut back = vec![0u8; 1 << 20];
    c.copy_from_device(ptr + (SIZE - back.len()) as u64, &mut back, 0).expect("copy_from_device");
    assert_eq!(back[..], data[SIZE - back.len()..], "read-back differs");
    println!("ready {ptr:#x}");
    std::io::stdout().flush().expect("stdout");
    // Block until the test closes our stdin (or kills us, which is the point).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
