//! Byte permutes, block and warp reductions, barriers with thread counts and the no-op
//! scheduling hints, in tiny hand-written kernels checked against the PTX ISA's definitions.

use vgpu_ptx::exec::Launch;
use vgpu_ptx::exec::{run, ExecError};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

/// Run `body` (PTX after the prologue: `%r0` = %tid.x, `%r1` = %laneid, `%rd1` = &out[tid])
/// on one block of `block` threads; what each thread stored at `out[tid]` (a `.b32`).
fn run_body(body: &str, block: u32) -> Result<Vec<u32>, ExecError> {
    let src = format!(
        ".version 8.0\n.target sm_90\n.address_size 64\n\
         .visible .entry k(.param .u64 outp)\n{{\n.reg .pred %p<8>;\n.reg .b32 %r<40>;\n.reg .b64 %rd<8>;\n\
         ld.param.u64 %rd2, [outp];\nmov.u32 %r0, %tid.x;\nmov.u32 %r1, %laneid;\n\
         mul.wide.u32 %rd3, %r0, 4;\nadd.s64 %rd1, %rd2, %rd3;\n{body}\nret;\n}}\n"
    );
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let k = m.lower(m.function("k").unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let mem = Allocations::default();
    let out = mem.alloc(&vec![0u8; block as usize * 4]);
    let p = out.to_le_bytes();
    let l = Launch {
        grid: [1, 1, 1],
        block: [block, 1, 1],
        params: &p,
        dynamic_shared: 0,
        globals: &[],
        budget: 1_000_000,
        functions: &[],
        printf: &|_| {},
    };
    run(&k, &l, &mem, &|| false)?;
    Ok(mem.get(out, block as usize * 4).chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
}

#[test]
fn prmt_modes_run_in_a_kernel() {
    // c = tid: the mode's row is tid % 4.
    let got =
        run_body("mov.b32 %r2, 0x33221100;\nmov.b32 %r3, 0x77665544;\nprmt.b32.f4e %r4, %r2, %r3, %r0;\nst.global.b32 [%rd1], %r4;", 4)
            .unwrap();
    assert_eq!(got, [0x3322_1100, 0x4433_2211, 0x5544_3322, 0x6655_4433]);
    let got =
        run_body("mov.b32 %r2, 0x33221100;\nmov.b32 %r3, 0x77665544;\nprmt.b32.b4e %r4, %r2, %r3, %r0;\nst.global.b32 [%rd1], %r4;", 4)
            .unwrap();
    assert_eq!(got, [0x5566_7700, 0x6677_0011, 0x7700_1122, 0x0011_2233]);
}
