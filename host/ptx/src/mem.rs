//! A simple global memory for the interpreter: separate allocations, each bounds-checked, at
//! addresses 256 MiB apart (so an overrun never lands in another allocation). For tests,
//! benchmarks and tools; `emu` brings its own [`Memory`] over its allocations.

use std::sync::Mutex;

use crate::exec::{Fault, Memory};

/// Where the first allocation starts, and the distance between allocations.
pub const STRIDE: u64 = 0x1000_0000;

/// Allocations of global memory.
#[derive(Default)]
pub struct Allocations {
    blocks: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl Allocations {
    /// A new allocation holding `bytes` (at most [`STRIDE`] of them); its address.
    pub fn alloc(&self, bytes: &[u8]) -> u64 {
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        assert!(bytes.len() as u64 <= STRIDE, "an allocation of {} bytes is larger than the stride", bytes.len());
        let base = STRIDE * (b.len() as u64 + 1);
        b.push((base, bytes.to_vec()));
        base
    }

    /// A copy of `len` bytes at `addr` (panics if they are not allocated: for tests).
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(addr, &mut v).unwrap_or_else(|f| panic!("reading {len} bytes at {addr:#x}: not allocated ({f:?})"));
        v
    }

    fn with<T>(&self, addr: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> Result<T, Fault> {
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let i = (addr / STRIDE).checked_sub(1).map(|i| i as usize);
        if let Some((base, data)) = i.and_then(|i| b.get_mut(i)) {
            let off = addr - *base;
            if off.checked_add(len as u64).is_some_and(|e| e <= data.len() as u64) {
                let s = off as usize;
                return Ok(f(&mut data[s..s + len]));
            }
        }
        Err(Fault { addr, len: len as u64 })
    }
}

/// `len` bytes at `addr` in `blocks`, if allocated.
fn find(blocks: &mut [(u64, Vec<u8>)], addr: u64, len: usize) -> Option<&mut [u8]> {
    let i = usize::try_from((addr / STRIDE).checked_sub(1)?).ok()?;
    let (base, data) = blocks.get_mut(i)?;
    let off = addr - *base;
    if off.checked_add(len as u64).is_some_and(|e| e <= data.len() as u64) {
        let s = off as usize;
        return Some(&mut data[s..s + len]);
    }
    None
}

impl Memory for Allocations {
    fn read_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, out: &mut [u64; 32]) -> Result<(), Fault> {
        // One lock for the warp.
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let fault = Fault { addr: addrs[l], len: size as u64 };
            let d = find(&mut b, addrs[l], size).filter(|_| size <= 8).ok_or(fault)?;
            out[l] = match size {
                4 => u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])),
                8 => u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]),
                _ => {
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(d);
                    u64::from_le_bytes(v)
                }
            };
        }
        Ok(())
    }
    fn write_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, vals: &[u64; 32]) -> Result<(), Fault> {
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let fault = Fault { addr: addrs[l], len: size as u64 };
            let d = find(&mut b, addrs[l], size).filter(|_| size <= 8).ok_or(fault)?;
            match size {
                4 => d.copy_from_slice(&(vals[l] as u32).to_le_bytes()),
                _ => d.copy_from_slice(&vals[l].to_le_bytes()[..size]),
            }
        }
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.with(addr, buf.len(), |d| buf.copy_from_slice(d))
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        self.with(addr, data.len(), |d| d.copy_from_slice(data))
    }
    fn atomic(&self, addr: u64, size: usize, f: &mut dyn FnMut(u64) -> u64) -> Result<u64, Fault> {
        if !(1..=8).contains(&size) {
            return Err(Fault { addr, len: size as u64 });
        }
        self.with(addr, size, |d| {
            let mut v = [0u8; 8];
            v[..size].copy_from_slice(d);
            let old = u64::from_le_bytes(v);
            d.copy_from_slice(&f(old).to_le_bytes()[..size]);
            old
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default methods, lane by lane over `read`/`write`, to compare with.
    struct Plain<'a>(&'a Allocations);
    impl Memory for Plain<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
            self.0.read(addr, buf)
        }
        fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fault> {
            self.0.write(addr, data)
        }
        fn atomic(&self, addr: u64, size: usize, f: &mut dyn FnMut(u64) -> u64) -> Result<u64, Fault> {
            self.0.atomic(addr, size, f)
        }
    }

    #[test]
    fn warp_accesses_are_the_lane_by_lane_accesses() {
        for size in [1usize, 2, 4, 8] {
            let (a, b) = (Allocations::default(), Allocations::default());
            let init: Vec<u8> = (0..64u8).collect();
            let (x, _) = (a.alloc(&init), b.alloc(&init));
            let mut addrs: [u64; 32] = std::array::from_fn(|l| x + (l as u64 * 3) % 60);
            // Lane 9 runs past the allocation, lane 20 is nowhere: the first bad lane is the fault.
            addrs[9] = x + 64 - size as u64 + 1;
            addrs[20] = 7;
            let vals: [u64; 32] = std::array::from_fn(|l| 0x1122_3344_5566_7788u64.rotate_left(l as u32));
            for mask in [u32::MAX, 0x0000_01ff, 0xfff0_0000, 0] {
                let r1 = a.write_lanes(&addrs, size, mask, &vals);
                let r2 = Plain(&b).write_lanes(&addrs, size, mask, &vals);
                assert_eq!(r1, r2, "size {size} mask {mask:#x}");
                assert_eq!(a.get(x, 64), b.get(x, 64), "size {size} mask {mask:#x}");
                let (mut o1, mut o2) = ([0u64; 32], [0u64; 32]);
                let r1 = a.read_lanes(&addrs, size, mask, &mut o1);
                let r2 = Plain(&b).read_lanes(&addrs, size, mask, &mut o2);
                assert_eq!((r1, o1), (r2, o2), "size {size} mask {mask:#x}");
            }
        }
    }
}
