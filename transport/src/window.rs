//! Guest-side management of the data window: staging chunks for bulk copies.
//!
//! The host only ever checks that a `(window offset, length)` pair lies inside the window; which
//! bytes mean what is the guest's business. The first part of the window is cut into fixed chunks
//! used to pipeline pageable copies; the rest is left for pinned allocations.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// Default staging chunk size.
pub const CHUNK: u64 = 1 << 20;
/// Default number of staging chunks (in flight at once per copy pipeline).
pub const CHUNKS: u64 = 4;

/// A pool of equal window chunks.
#[derive(Debug)]
pub struct Staging {
    chunk: u64,
    count: u64,
    free: Mutex<Vec<u64>>,
    cv: Condvar,
}

impl Staging {
    /// Cut up to `CHUNKS` chunks of `CHUNK` bytes (smaller if the window is small) from the
    /// start of a window of `window_len` bytes, using at most half of it.
    pub fn new(window_len: u64) -> Staging {
        let chunk = (window_len / 4 / 4096 * 4096).clamp(4096, CHUNK);
        let count = if window_len >= chunk { (window_len / 2 / chunk).clamp(1, CHUNKS) } else { 0 };
        let free = (0..count).rev().map(|i| i * chunk).collect();
        Staging { chunk, count, free: Mutex::new(free), cv: Condvar::new() }
    }

    pub fn chunk_len(&self) -> u64 {
        self.chunk
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Window bytes not used for staging: `(offset, len)`.
    pub fn rest(&self, window_len: u64) -> (u64, u64) {
        let used = self.chunk * self.count;
        (used, window_len.saturating_sub(used))
    }

    /// Take a free chunk, waiting for one; `alive` is polled every 100 ms so a dead link ends the
    /// wait.
    pub fn acquire(&self, alive: impl Fn() -> Result<()>) -> Result<u64> {
        if self.count == 0 {
            return Err(Error::Setup("the data window is too small for staging".into()));
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(off) = free.pop() {
                return Ok(off);
            }
            alive()?;
            free = self.cv.wait_timeout(free, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Take a free chunk if one is available now.
    pub fn try_acquire(&self) -> Option<u64> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Return a chunk.
    pub fn release(&self, off: u64) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(off);
        self.cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_window() {
        let s = Staging::new(64 << 20);
        assert_eq!(s.chunk_len(), CHUNK);
        assert_eq!(s.count(), CHUNKS);
        let s = Staging::new(64 << 10);
        assert!(s.count() >= 1 && s.chunk_len() * s.count() <= 64 << 10);
        let a = s.acquire(|| Ok(())).unwrap();
        s.release(a);
    }
}
