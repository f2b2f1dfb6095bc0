//! Stream semantics on the emu executor: CUDA's legacy default stream (stream 0 waits for
//! earlier work on blocking streams and vice versa; non-blocking streams are independent), and
//! calls that complete only after earlier work (MemFree, StreamDestroy).

use vgpu_tests::*;
use vgpu_transport::wire::{Call, Status};
use vgpu_transport::Client;

const BUF: u64 = 64 << 20;
/// Memsets queued behind each other: a backlog of a few hundred milliseconds on emu.
const BACKLOG: u64 = 48;

fn stream(c: &Client, flags: u64) -> u32 {
    c.call_blocking(Call::StreamCreate, 0, args(flags, 0, 0)).expect("StreamCreate")[0] as u32
}

fn event(c: &Client) -> u64 {
    c.call_blocking(Call::EventCreate, 0, args(0, 0, 0)).expect("EventCreate")[0]
}

/// Queue BACKLOG memsets of `buf` on `s`, the last one writing `last`; record `ev` after them.
fn backlog(c: &Client, s: u32, buf: u64, last: u8, ev: u64) {
    for i in 0..BACKLOG {
        let v = if i + 1 == BACKLOG { last as u64 } else { 0x40 + (i % 16) };
        c.fire(Call::Memset, s, args(buf, v, BUF)).expect("Memset");
    }
    c.fire(Call::EventRecord, s, args(ev, 0, 0)).expect("EventRecord");
}

fn query(c: &Client, ev: u64) -> Status {
    match c.call_blocking(Call::EventQuery, 0, args(ev, 0, 0)) {
        Ok(_) => Status::Ok,
        Err(e) => e.status().expect("EventQuery failed on the host"),
    }
}

#[test]
fn default_stream_waits_for_blocking_streams() {
    let m = mediator();
    let c = connect(&m);
    let (x, y) = (alloc(&c, BUF), alloc(&c, BUF));
    let b = stream(&c, 0);
    let ev = event(&c);
    backlog(&c, b, x, 0x11, ev);
    // On stream 0: copy x to y, then read y. Legacy semantics make the copy wait for the whole
    // backlog on the blocking stream, so y holds the last memset's value.
    c.fire(Call::MemcpyDtoD, 0, args(y, x, 4096)).expect("DtoD");
    let mut out = vec![0u8; 4096];
    c.copy_from_device(y, &mut out, 0).expect("DtoH");
    assert!(out.iter().all(|&v| v == 0x11), "stream 0 ran before earlier blocking-stream work: {:#x}", out[0]);
    assert_eq!(query(&c, ev), Status::Ok);
    assert!(c.take_deferred_error().is_none());
}

#[test]
fn blocking_stream_waits_for_the_default_stream() {
    let m = mediator();
    let c = connect(&m);
    let (x, y) = (alloc(&c, BUF), alloc(&c, BUF));
    let b = stream(&c, 0);
    let ev = event(&c);
    backlog(&c, 0, x, 0x22, ev);
    c.fire(Call::MemcpyDtoD, b, args(y, x, 4096)).expect("DtoD");
    let mut out = vec![0u8; 4096];
    c.copy_from_device(y, &mut out, b).expect("DtoH");
    assert!(out.iter().all(|&v| v == 0x22), "a blocking stream ran before earlier stream-0 work: {:#x}", out[0]);
    assert!(c.take_deferred_error().is_none());
}

#[test]
fn non_blocking_stream_does_not_hold_up_the_default_stream() {
    let m = mediator();
    let c = connect(&m);
    let (x, y) = (alloc(&c, BUF), alloc(&c, 4096));
    let nb = stream(&c, 1);
    let ev = event(&c);
    backlog(&c, nb, x, 0x33, ev);
    // Stream 0 work on other memory completes while the non-blocking backlog is still running.
    c.copy_to_device(y, &[7u8; 4096], 0).expect("HtoD");
    let mut out = vec![0u8; 4096];
    c.copy_from_device(y, &mut out, 0).expect("DtoH");
    assert_eq!(out, vec![7u8; 4096]);
    assert_eq!(query(&c, ev), Status::NotReady, "stream 0 waited for a non-blocking stream");
    c.call_blocking(Call::EventSync, 0, args(ev, 0, 0)).expect("EventSync");
    assert_eq!(query(&c, ev), Status::Ok);
}

#[test]
fn free_and_stream_destroy_complete_after_earlier_work() {
    let m = mediator();
    let c = connect(&m);
    let x = alloc(&c, BUF);
    let nb = stream(&c, 1);
    let ev = event(&c);
    backlog(&c, nb, x, 0x44, ev);
    assert_eq!(query(&c, ev), Status::NotReady);
    // cudaFree synchronises: by the time it returns, the work using the memory has finished.
    c.call_blocking(Call::MemFree, 0, args(x, 0, 0)).expect("MemFree");
    assert_eq!(query(&c, ev), Status::Ok, "MemFree returned before earlier work finished");
    // The address is dead for later commands at once.
    let e = c.call_blocking(Call::Memset, 0, args(x, 0, 16)).unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidDevicePointer));

    let z = alloc(&c, BUF);
    let ev2 = event(&c);
    backlog(&c, nb, z, 0x55, ev2);
    c.call_blocking(Call::StreamDestroy, 0, args(nb as u64, 0, 0)).expect("StreamDestroy");
    assert_eq!(query(&c, ev2), Status::Ok, "StreamDestroy returned before the stream's work finished");
    let e = c.call_blocking(Call::StreamSync, nb, [0; 6]).unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidHandle));
}
