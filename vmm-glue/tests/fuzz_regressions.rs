//! Regression tests for what the fuzz targets in `fuzz/` found in `vmm-glue` (see
//! docs/FUZZING.md). Each names the target and the input it minimized to.

use vfsdax_protocol::report::Access;
use vfsdax_vmm_glue::fault::decode::{decode, DecodeRegs};

fn regs() -> DecodeRegs {
    let mut r = DecodeRegs {
        rip: 0x40_0000,
        ..Default::default()
    };
    for (i, g) in r.gpr.iter_mut().enumerate() {
        *g = 0x1000 * (i as u64 + 1);
    }
    r
}

/// insn_decoder: `66 48 c7 05 <disp32> <imm32>`, `mov qword [rip+disp], imm32` with a redundant
/// operand-size prefix. REX.W wins over 0x66, so the immediate is 4 bytes, not 2: the
/// instruction is 12 bytes long and its operand lies at rip + 12 + disp. A wrong immediate
/// length moves every RIP-relative operand of such an instruction by 2 bytes.
#[test]
fn rex_w_overrides_the_operand_size_prefix_for_the_immediate() {
    let code = [0x66, 0x48, 0xc7, 0x05, 0x10, 0, 0, 0, 1, 2, 3, 4];
    let m = decode(&code, &regs()).expect("a store");
    assert_eq!(m.linear, 0x40_0000 + 12 + 0x10);
    assert_eq!(m.access, Access::Write);
    assert_eq!(m.len, 8);
    // The same with a group-1 ALU op (`add qword [rip+disp], imm32`).
    let code = [0x66, 0x48, 0x81, 0x05, 0x10, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(
        decode(&code, &regs()).expect("a store").linear,
        0x40_0000 + 12 + 0x10
    );
    // Without REX.W the prefix does make it a 2-byte immediate: `mov word [rip+disp], imm16`.
    let code = [0x66, 0xc7, 0x05, 0x10, 0, 0, 0, 1, 2];
    assert_eq!(
        decode(&code, &regs()).expect("a store").linear,
        0x40_0000 + 9 + 0x10
    );
}

/// insn_decoder: `64 48 ab`, `stosq` with an FS prefix. `stos` always stores to ES:[rdi]; a
/// segment override does not apply to it, so the FS base must not be added.
#[test]
fn stos_ignores_a_segment_prefix() {
    let mut r = regs();
    r.fs_base = 0x7000_0000;
    r.gs_base = 0x7100_0000;
    let rdi = r.gpr[7];
    for code in [&[0x64, 0x48, 0xab][..], &[0x65, 0xaa], &[0xf3, 0x64, 0xab]] {
        let m = decode(code, &r).expect("a store");
        assert_eq!((m.linear, m.access), (rdi, Access::Write), "{code:02x?}");
    }
    // With a 32-bit address size it is ES:[edi].
    r.gpr[7] = 0x1_2345_6789;
    assert_eq!(
        decode(&[0x67, 0x64, 0xaa], &r).expect("a store").linear,
        0x2345_6789
    );
    // lods reads DS:[rsi], which the prefix does override.
    let m = decode(&[0x64, 0xac], &r).expect("a load");
    assert_eq!(m.linear, r.gpr[6] + 0x7000_0000);
}
