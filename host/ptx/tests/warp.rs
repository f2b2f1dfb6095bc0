//! Byte permutes, block and warp reductions, barriers with thread counts and the no-op
//! scheduling hints, in tiny hand-written kernels checked against the PTX ISA's definitions.

use vgpu_ptx::exec::Launch;
use vgpu_ptx::exec::{run, ExecError};
use vgpu_ptx::mem::Allocations;
use vgpu_ptx::Module;

/// Run `body` (PTX after the prologue: `%r0` = %tid.x, `%r1` = %laneid, `%rd1` = &out[tid])
/// on one block of `block` threads; what each thread stored at `out[tid]` (a `.b32`).
fn run_body(body: &str, block: u32) -> Result<Vec<u32>, ExecError> {
    run_with("", body, block)
}

/// `run_body` with module-level declarations `decls` (`.shared` variables).
fn run_with(decls: &str, body: &str, block: u32) -> Result<Vec<u32>, ExecError> {
    let src = format!(
        ".version 8.0\n.target sm_90\n.address_size 64\n{decls}\
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

fn unsupported(e: ExecError, what: &str) {
    assert!(matches!(&e, ExecError::Unsupported { what: w, .. } if w.contains(what)), "{e}");
}

#[test]
fn bar_red_reduces_a_predicate_over_the_block() {
    // 96 threads; p = (tid % 3 == 0): true in 32 of them.
    let pre = "rem.u32 %r2, %r0, 3;\nsetp.eq.u32 %p1, %r2, 0;\n";
    let got = run_body(&format!("{pre}bar.red.popc.u32 %r3, 0, %p1;\nst.global.b32 [%rd1], %r3;"), 96).unwrap();
    assert_eq!(got, vec![32; 96]);
    // Negated predicate, with the thread count written.
    let got = run_body(&format!("{pre}bar.red.popc.u32 %r3, 0, 96, !%p1;\nst.global.b32 [%rd1], %r3;"), 96).unwrap();
    assert_eq!(got, vec![64; 96]);
    let pred = |op: &str, p: &str| {
        format!("{pre}setp.lt.u32 %p2, %r0, 200;\nbarrier.red.{op}.pred %p3, 1, {p};\nselp.u32 %r3, 1, 0, %p3;\nst.global.b32 [%rd1], %r3;")
    };
    assert_eq!(run_body(&pred("and", "%p1"), 96).unwrap(), vec![0; 96]);
    assert_eq!(run_body(&pred("or", "%p1"), 96).unwrap(), vec![1; 96]);
    assert_eq!(run_body(&pred("and", "%p2"), 96).unwrap(), vec![1; 96]);
    assert_eq!(run_body(&pred("or", "!%p2"), 96).unwrap(), vec![0; 96]);
}

/// A named barrier with a thread count completes when that many threads are there, while
/// the rest of the block still runs; `bar.arrive` counts without waiting.
#[test]
fn counted_barriers_complete_without_the_rest_of_the_block() {
    // Warps 0 and 1 meet at barrier 2 (64 threads) while warp 2 spins until thread 0 raises
    // the flag after it.
    let decls = ".shared .align 4 .b32 flag;\n.shared .align 4 .b32 vals[32];\n";
    let body = "mov.u32 %r9, flag;\nsetp.ge.u32 %p1, %r0, 64;\n@%p1 bra SPIN;\n\
        bar.sync 2, 64;\nsetp.ne.u32 %p2, %r0, 0;\n@%p2 bra OUT;\nst.volatile.shared.u32 [%r9], 1;\nbra OUT;\n\
        SPIN:\nnanosleep.u32 100;\nld.volatile.shared.u32 %r3, [%r9];\nsetp.eq.u32 %p3, %r3, 0;\n@%p3 bra SPIN;\n\
        OUT:\nst.global.b32 [%rd1], 7;";
    let got = run_with(decls, body, 96).unwrap();
    assert_eq!(got, vec![7; 96]);
    // Producer and consumers: warp 2 writes vals[] and arrives at barrier 1 (96 threads);
    // warps 0 and 1 wait there, then read what it wrote.
    let body = "mov.u32 %r9, vals;\nand.b32 %r4, %r0, 31;\nshl.b32 %r5, %r4, 2;\nadd.s32 %r6, %r9, %r5;\n\
        setp.lt.u32 %p1, %r0, 64;\n@%p1 bra CONSUME;\n\
        mul.lo.u32 %r7, %r4, 10;\nst.shared.u32 [%r6], %r7;\nbar.arrive 1, 96;\nst.global.b32 [%rd1], 1;\nbra DONE;\n\
        CONSUME:\nbar.sync 1, 96;\nld.shared.u32 %r8, [%r6];\nst.global.b32 [%rd1], %r8;\nDONE:";
    let got = run_with(decls, body, 96).unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<u32> = (0..96).map(|t| if t < 64 { (t % 32) * 10 } else { 1 }).collect();
    assert_eq!(got, want);
    // A block whose threads all wait at barriers that cannot complete is refused (a device hangs).
    let e = run_body("setp.lt.u32 %p1, %r0, 32;\n@%p1 bar.sync 1;\n@!%p1 bar.sync 2;\nst.global.b32 [%rd1], 1;", 64).unwrap_err();
    unsupported(e, "cannot complete");
    let e = run_body("bar.sync 0, 32;\nst.global.b32 [%rd1], 1;", 64);
    assert_eq!(e.unwrap(), vec![1; 64], "two generations of a 32-thread barrier");
    // Barrier ids from registers: warps 0 and 2 meet at barrier 1, warps 1 and 3 at barrier 2.
    let body = "shr.u32 %r5, %r0, 5;\nand.b32 %r5, %r5, 1;\nadd.s32 %r5, %r5, 1;\nbarrier.sync %r5, 64;\nst.global.b32 [%rd1], %r5;";
    assert_eq!(run_body(body, 128).unwrap(), (0..128).map(|t| (t / 32) % 2 + 1).collect::<Vec<u32>>());
    let e = run_body("bar.sync 1, 32;\nst.global.b32 [%rd1], 1;", 64).unwrap();
    assert_eq!(e, vec![1; 64]);
    // Arrivals alone complete a barrier: two rounds of 64 arrivals at barrier 3, then a
    // 32-thread barrier completed by a warp that waits and one that arrives.
    let body = "bar.arrive 3, 64;\nbar.arrive 3, 64;\nsetp.lt.u32 %p1, %r0, 32;\n@%p1 bar.sync 4, 64;\n@!%p1 bar.arrive 4, 64;\nst.global.b32 [%rd1], 2;";
    assert_eq!(run_body(body, 64).unwrap(), vec![2; 64]);
    let e = run_body("bar.arrive 3, 16;", 32).unwrap_err();
    unsupported(e, "32 threads arrived at barrier 3, whose thread count is 16");
    let e = run_body("bar.sync 16;", 32).unwrap_err();
    unsupported(e, "barrier 16");
}

#[test]
fn redux_reduces_over_the_member_mask() {
    // a = lane * 3 - 40 (negative for low lanes).
    let pre = "mad.lo.s32 %r2, %r1, 3, -40;\n";
    let red = |op: &str, ty: &str| run_body(&format!("{pre}redux.sync.{op}.{ty} %r3, %r2, -1;\nst.global.b32 [%rd1], %r3;"), 32).unwrap();
    let a: Vec<i32> = (0..32).map(|l| l * 3 - 40).collect();
    let all = |v: u32| vec![v; 32];
    assert_eq!(red("add", "s32"), all(a.iter().sum::<i32>() as u32));
    assert_eq!(red("add", "u32"), all(a.iter().fold(0u32, |s, &x| s.wrapping_add(x as u32))));
    assert_eq!(red("min", "s32"), all(-40i32 as u32));
    assert_eq!(red("max", "s32"), all(53));
    assert_eq!(red("min", "u32"), all(a.iter().map(|&x| x as u32).min().unwrap()));
    assert_eq!(red("max", "u32"), all(a.iter().map(|&x| x as u32).max().unwrap()));
    assert_eq!(red("and", "b32"), all(a.iter().fold(u32::MAX, |s, &x| s & x as u32)));
    assert_eq!(red("or", "b32"), all(a.iter().fold(0, |s, &x| s | x as u32)));
    assert_eq!(red("xor", "b32"), all(a.iter().fold(0, |s, &x| s ^ x as u32)));
    // Lanes 0-15 with their own mask.
    let got = run_body(
        &format!("{pre}mov.u32 %r3, 0;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 bra OUT;\nredux.sync.add.s32 %r3, %r2, 0xffff;\nOUT:\nst.global.b32 [%rd1], %r3;"),
        32,
    )
    .unwrap();
    let low: i32 = a[..16].iter().sum();
    assert_eq!(got, (0..32).map(|l| if l < 16 { low as u32 } else { 0 }).collect::<Vec<_>>());
    // Members that do not execute it: refused.
    let e = run_body(&format!("{pre}setp.ge.u32 %p1, %r1, 16;\n@%p1 redux.sync.add.s32 %r3, %r2, -1;"), 32).unwrap_err();
    unsupported(e, "every member must execute it");
    let e = run_body(&format!("{pre}redux.sync.add.b32 %r3, %r2, -1;"), 32).unwrap_err();
    unsupported(e, "redux.sync.add");
}

#[test]
fn match_any_and_all_compare_across_the_mask() {
    // a = lane % 4: lanes with equal a are those congruent mod 4.
    let got = run_body("and.b32 %r2, %r1, 3;\nmatch.any.sync.b32 %r3, %r2, -1;\nst.global.b32 [%rd1], %r3;", 32).unwrap();
    assert_eq!(got, (0..32).map(|l| 0x1111_1111u32 << (l % 4)).collect::<Vec<_>>());
    // match.all: d = the mask and p = true if all are equal, else d = 0 and p = false.
    let all = |a: &str, out: &str| {
        run_body(&format!("{a}match.all.sync.b32 %r3|%p1, %r2, -1;\nselp.u32 %r4, 1, 0, %p1;\nst.global.b32 [%rd1], {out};"), 32).unwrap()
    };
    assert_eq!(all("and.b32 %r2, %r1, 3;\n", "%r3"), vec![0; 32]);
    assert_eq!(all("and.b32 %r2, %r1, 3;\n", "%r4"), vec![0; 32]);
    assert_eq!(all("mov.b32 %r2, 9;\n", "%r3"), vec![u32::MAX; 32]);
    assert_eq!(all("mov.b32 %r2, 9;\n", "%r4"), vec![1; 32]);
    let got = run_body("cvt.u64.u32 %rd5, %r1;\nshr.u64 %rd5, %rd5, 3;\nshl.b64 %rd5, %rd5, 40;\nmatch.any.sync.b64 %r3, %rd5, -1;\nst.global.b32 [%rd1], %r3;", 32).unwrap();
    assert_eq!(got, (0..32).map(|l| 0xffu32 << (8 * (l / 8))).collect::<Vec<_>>());
}

#[test]
fn griddepcontrol_and_nanosleep_are_no_ops() {
    let got =
        run_body("griddepcontrol.wait;\nnanosleep.u32 1000;\ngriddepcontrol.launch_dependents;\nst.global.b32 [%rd1], %r0;", 40).unwrap();
    assert_eq!(got, (0..40).collect::<Vec<u32>>());
}
