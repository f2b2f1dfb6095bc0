//! A native Rust guest on the async API, under tokio: two streams, pinned and pageable copies,
//! an event dependency between the streams, a host function, and `.await` on completion.
//!
//! ```sh
//! vgpu serve &                       # or VGPU_SOCKET=... pointing at a running mediator
//! cargo run -p vgpu-streams --example saxpy_copy
//! ```

use vgpu_streams::{Device, Result};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let dev = Device::open()?;
    let info = dev.info()?;
    println!("device: {} ({} MiB)", info.name_str(), info.total_mem >> 20);

    let n = 1 << 20;
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (upload, download) = (dev.stream()?, dev.stream_with(true, -1)?);
    let a = dev.alloc::<f32>(n)?;
    let b = dev.alloc::<f32>(n)?;
    let ready = dev.event()?;

    // Stream 1: upload (pageable, staged), copy a -> b, mark the point.
    let start = dev.event()?;
    start.record(&upload)?;
    upload.upload(&a, &input)?;
    upload.copy(&b, &a)?;
    ready.record(&upload)?;

    // Stream 2 waits for stream 1, downloads into pinned memory, then runs a host function.
    let out = dev.alloc_pinned::<f32>(n)?;
    download.wait_event(&ready)?;
    download.download_pinned(&b, &out)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    download.host_fn(move || {
        let _ = tx.send("host function ran in stream order");
    })?;
    download.synchronize().await?;
    println!("{}", rx.await.unwrap_or("host function did not run"));

    let back = out.to_vec();
    assert!(back == input, "round trip mismatch");
    ready.synchronize().await?;
    println!(
        "copied {} MiB through two streams in {:.3} ms; {} blocking round trips",
        (n * 4) >> 20,
        start.elapsed_ms(&ready)?,
        dev.blocking_round_trips()
    );
    Ok(())
}
