//! `insn_decoder`: `vmm-glue`'s x86-64 memory-operand decoder ([`decode`]) on arbitrary bytes and
//! registers, against iced-x86, a complete decoder.
//!
//! Checked: whenever `decode_operands` names accesses (two for `movs` and `cmps`; `decode` is
//! the first) and iced decodes the same bytes (in 64-bit mode,
//! at the same RIP; missing trailing bytes read as zeros) to a valid instruction, one of that
//! instruction's memory accesses lies at the same linear address, and the direction agrees (a load for iced's read or conditional read; a store for a
//! write, a conditional write or a read-modify-write, which `decode` reports as stores). The
//! width is best effort and not checked, nor are instructions `decode` declines (`None`).
//!
//! Input: `n: u8` (code length, mod 25), `n` code bytes, then the registers as `u64`s (rip,
//! fs base, gs base, rax..r15; missing ones are 0).

use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
use vfsdax_protocol::report::Access;
use vfsdax_vmm_glue::fault::decode::{decode, decode_operands, DecodeRegs};

use crate::input::Input;

/// Longest code given to the decoders.
pub const MAX_CODE: usize = 24;

/// The value of `reg` for iced (segment registers: their base).
fn value(regs: &DecodeRegs, reg: Register) -> Option<u64> {
    let gpr = |base: Register, mask: u64| Some(regs.gpr[reg as usize - base as usize] & mask);
    match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        Register::FS => Some(regs.fs_base),
        Register::GS => Some(regs.gs_base),
        r if r.is_gpr64() => gpr(Register::RAX, u64::MAX),
        r if r.is_gpr32() => gpr(Register::EAX, 0xffff_ffff),
        r if r.is_gpr16() => gpr(Register::AX, 0xffff),
        _ => None,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(n) = input.u8() else { return };
    let n = usize::from(n) % (MAX_CODE + 1);
    let Some(code) = input.bytes(n) else { return };
    let mut regs = DecodeRegs::default();
    let mut fields: Vec<&mut u64> = regs.gpr.iter_mut().collect();
    let (rip, fs, gs) = (input.u64(), input.u64(), input.u64());
    for f in fields.iter_mut() {
        **f = input.u64().unwrap_or(0);
    }
    drop(fields);
    regs.rip = rip.unwrap_or(0);
    regs.fs_base = fs.unwrap_or(0);
    regs.gs_base = gs.unwrap_or(0);
    check(code, &regs);
}

/// Decodes `code` with both decoders and compares (panics on a disagreement).
pub fn check(code: &[u8], regs: &DecodeRegs) {
    let operands = decode_operands(code, regs);
    assert_eq!(
        decode(code, regs),
        operands.first().copied(),
        "decode is the first operand"
    );
    if operands.is_empty() {
        return;
    }
    // `decode` needs the bytes up to the operand only (the exit may give fewer than a whole
    // instruction): let iced see the rest as zeros. An encoding iced finds invalid cannot
    // have faulted on memory (the CPU raises #UD first): nothing to compare.
    let padded = [code, &[0u8; 16]].concat();
    let mut d = Decoder::with_ip(64, &padded, regs.rip, DecoderOptions::NONE);
    let instr = d.decode();
    if instr.is_invalid() {
        return;
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let accesses: Vec<(u64, OpAccess)> = info
        .used_memory()
        .iter()
        .filter_map(|u| Some((u.virtual_address(0, |r, _, _| value(regs, r))?, u.access())))
        .collect();
    let direction = |acc: OpAccess| match acc {
        OpAccess::Read | OpAccess::CondRead => Some(Access::Read),
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
            Some(Access::Write)
        }
        _ => None,
    };
    for m in operands {
        // Two operands may lie at the same address (`movs` with rsi = rdi): any will do.
        let at: Vec<OpAccess> = accesses
            .iter()
            .filter(|(a, _)| *a == m.linear)
            .map(|&(_, acc)| acc)
            .collect();
        assert!(
            !at.is_empty(),
            "decode says {m:?} for {code:02x?} ({instr:?}); iced's accesses: {accesses:x?}"
        );
        assert!(
            at.iter().any(|&acc| direction(acc) == Some(m.access)),
            "direction of {code:02x?} ({instr:?}) at {:#x}: decode {:?}, iced {at:?}",
            m.linear,
            m.access
        );
    }
}
