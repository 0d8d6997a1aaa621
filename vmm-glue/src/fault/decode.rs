//! Best-effort decoding of the memory operand of a faulting x86-64 instruction, for exits that
//! carry no address (a bare `EFAULT`): given the instruction bytes at RIP and the registers, the
//! linear address, width and direction of the access. Covers the common general-purpose, SSE and
//! VEX (AVX, AVX2) move/ALU forms and the string instructions compilers emit for copies (`rep
//! movs`, `rep stos`, `cmps`: [`decode_operands`] gives both operands of the two-operand ones);
//! anything else (EVEX, x87, ...) yields nothing and the caller falls back to locating the
//! fault by file size.

use vfsdax_protocol::report::Access;

/// The registers the decoder needs (64-bit mode only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeRegs {
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8–r15, in encoding order.
    pub gpr: [u64; 16],
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
}

/// A decoded memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemAccess {
    /// Linear (guest-virtual) address of the operand.
    pub linear: u64,
    /// Operand width in bytes (best effort).
    pub len: u32,
    /// Load, store (or read-modify-write, reported as a store).
    pub access: Access,
}

#[derive(Clone, Copy)]
enum Imm {
    None,
    B1,
    /// 4 bytes, or 2 with an operand-size prefix.
    Z,
}

/// What a ModRM opcode does with its r/m operand: (access, immediate). `reg` is ModRM.reg.
fn one_byte(op: u8, reg: u8) -> Option<(Access, Imm)> {
    use Access::{Read as R, Write as W};
    Some(match op {
        0x00..=0x3b if op & 7 < 4 => {
            // ALU r/m,reg (d=0: r/m is the destination) and reg,r/m (d=1); CMP only reads.
            if op & 2 != 0 || (0x38..=0x3b).contains(&op) {
                (R, Imm::None)
            } else {
                (W, Imm::None)
            }
        }
        0x63 => (R, Imm::None),
        0x69 => (R, Imm::Z),
        0x6b => (R, Imm::B1),
        0x80 | 0x82 => (if reg == 7 { R } else { W }, Imm::B1),
        0x81 => (if reg == 7 { R } else { W }, Imm::Z),
        0x83 => (if reg == 7 { R } else { W }, Imm::B1),
        0x84 | 0x85 => (R, Imm::None),
        0x86..=0x89 => (W, Imm::None),
        0x8a | 0x8b => (R, Imm::None),
        0xc0 | 0xc1 => (W, Imm::B1),
        0xc6 => (W, Imm::B1),
        0xc7 => (W, Imm::Z),
        0xd0..=0xd3 => (W, Imm::None),
        0xf6 => match reg {
            0 | 1 => (R, Imm::B1),
            2 | 3 => (W, Imm::None),
            _ => (R, Imm::None),
        },
        0xf7 => match reg {
            0 | 1 => (R, Imm::Z),
            2 | 3 => (W, Imm::None),
            _ => (R, Imm::None),
        },
        0xfe | 0xff => match reg {
            0 | 1 => (W, Imm::None),
            2..=6 => (R, Imm::None),
            _ => return None,
        },
        _ => return None,
    })
}

/// Two-byte (`0F xx`) ModRM opcodes: (access, immediate, SSE width).
fn two_byte(op: u8, reg: u8) -> Option<(Access, Imm, bool)> {
    use Access::{Read as R, Write as W};
    Some(match op {
        0x10 | 0x12 | 0x16 | 0x28 | 0x2a | 0x2c | 0x2d | 0x2e | 0x2f | 0x51..=0x5f | 0x6f => {
            (R, Imm::None, true)
        }
        0x11 | 0x13 | 0x17 | 0x29 | 0x2b | 0x7f | 0xd6 | 0xe7 => (W, Imm::None, true),
        0x40..=0x4f | 0xaf | 0xb6 | 0xb7 | 0xbe | 0xbf | 0xa3 => (R, Imm::None, false),
        0xab | 0xb3 | 0xbb | 0xb0 | 0xb1 | 0xc0 | 0xc1 | 0xc3 => (W, Imm::None, false),
        0xba => (if reg == 4 { R } else { W }, Imm::B1, false),
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    fn i32(&mut self) -> Option<i64> {
        let s = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        Some(i64::from(i32::from_le_bytes([s[0], s[1], s[2], s[3]])))
    }
    fn u64(&mut self) -> Option<u64> {
        let s = self.b.get(self.i..self.i + 8)?;
        self.i += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_le_bytes(a))
    }
}

/// VEX map 1 (`0F`) ModRM opcodes: (access, width for VEX.L = 0, width for VEX.L = 1). `pp` is
/// VEX.pp (1: 66, 2: F3, 3: F2).
fn vex_map1(op: u8, pp: u8) -> Option<(Access, u32, u32)> {
    use Access::{Read as R, Write as W};
    Some(match (op, pp) {
        // vmovss / vmovsd load and store one element.
        (0x10, 2) => (R, 4, 4),
        (0x10, 3) => (R, 8, 8),
        (0x11, 2) => (W, 4, 4),
        (0x11, 3) => (W, 8, 8),
        // vmovups/pd, vmovaps/pd, vmovdqu/dqa, vlddqu, vmovntdqa-style loads.
        (0x10 | 0x28 | 0x6f, _) | (0xf0, 3) => (R, 16, 32),
        (0x12 | 0x16, _) => (R, 8, 8),
        // Stores: vmovups/pd, vmovaps/pd, vmovntps/pd, vmovdqu/dqa, vmovntdq, vmovq.
        (0x11 | 0x29 | 0x2b | 0x7f | 0xe7, _) => (W, 16, 32),
        (0x13 | 0x17 | 0xd6, _) => (W, 8, 8),
        _ => return None,
    })
}

/// Decodes the memory operand of the 64-bit-mode instruction at the start of `code` (the first
/// of two for `movs` and `cmps`: see [`decode_operands`]).
pub fn decode(code: &[u8], regs: &DecodeRegs) -> Option<MemAccess> {
    decode_operands(code, regs).into_iter().next()
}

/// Every memory operand of the 64-bit-mode instruction at the start of `code`: one for most,
/// two (`[rsi]` then `[rdi]`) for `movs` and `cmps`, none if it is not decoded.
pub fn decode_operands(code: &[u8], regs: &DecodeRegs) -> Vec<MemAccess> {
    decode_len(code, regs).map(|d| d.0).unwrap_or_default()
}

/// The start of the store that ended at `end`, for an exit taken after the store retired (an
/// MMIO write): `before` holds the (up to 15) code bytes just before `end`, `regs` the registers
/// after the store (a plain store changes none but RIP), `width` the exit's access width. A start
/// qualifies if the instruction decoded there ends exactly at `end` and stores at least `width`
/// bytes to an operand `hits(linear, len)` accepts (the caller translates it and checks it
/// covers the exit's GPA). `None` unless exactly one start qualifies: a wrong rewind would run other code.
pub fn store_start(
    before: &[u8],
    end: u64,
    regs: &DecodeRegs,
    width: u32,
    mut hits: impl FnMut(u64, u32) -> bool,
) -> Option<u64> {
    let mut found = None;
    for k in 1..=before.len().min(15) {
        let start = end.wrapping_sub(k as u64);
        let at = DecodeRegs {
            rip: start,
            ..*regs
        };
        let Some((ops, n)) = decode_len(&before[before.len() - k..], &at) else {
            continue;
        };
        let stores = ops
            .iter()
            .any(|m| m.access == Access::Write && m.len >= width && hits(m.linear, m.len));
        if n == k && stores {
            if found.is_some() {
                return None;
            }
            found = Some(start);
        }
    }
    found
}

/// The memory operands of the instruction at the start of `code` and its length in bytes.
fn decode_len(code: &[u8], regs: &DecodeRegs) -> Option<(Vec<MemAccess>, usize)> {
    let mut c = Cursor { b: code, i: 0 };
    let ops = decode_inner(&mut c, regs)?;
    Some((ops, c.i))
}

fn decode_inner(c: &mut Cursor<'_>, regs: &DecodeRegs) -> Option<Vec<MemAccess>> {
    let (mut opsize16, mut addr32, mut seg_base) = (false, false, 0u64);
    let mut byte = c.u8()?;
    loop {
        match byte {
            0x66 => opsize16 = true,
            0x67 => addr32 = true,
            0x64 => seg_base = regs.fs_base,
            0x65 => seg_base = regs.gs_base,
            0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e => {}
            _ => break,
        }
        byte = c.u8()?;
    }
    let mut rex = if (0x40..=0x4f).contains(&byte) {
        let r = byte;
        byte = c.u8()?;
        r
    } else {
        0
    };
    // VEX (C5: 2 bytes, C4: 3 bytes; always VEX in 64-bit mode): its R, X, B (inverted) and W
    // are REX's, its map 1 is `0F`.
    let mut vex: Option<(u8, bool)> = None;
    if byte == 0xc5 || byte == 0xc4 {
        let b1 = c.u8()?;
        let (r_bar, xb_bar, w, tail) = if byte == 0xc5 {
            (b1 >> 7, 3u8, false, b1)
        } else {
            if b1 & 0x1f != 1 {
                return None;
            }
            let b2 = c.u8()?;
            (b1 >> 7, (b1 >> 5) & 3, b2 & 0x80 != 0, b2)
        };
        rex = 0x40
            | u8::from(w) << 3
            | (r_bar ^ 1) << 2
            | ((xb_bar >> 1) ^ 1) << 1
            | ((xb_bar & 1) ^ 1);
        vex = Some((tail & 3, tail & 4 != 0));
        byte = 0x0f;
    }
    let rex_w = rex & 8 != 0;
    let width = |byte_op: bool| -> u32 {
        if byte_op {
            1
        } else if rex_w {
            8
        } else if opsize16 {
            2
        } else {
            4
        }
    };
    let fin = |linear: u64, len, access| {
        let linear = if addr32 { linear & 0xffff_ffff } else { linear };
        Some(vec![MemAccess {
            linear: linear.wrapping_add(seg_base),
            len,
            access,
        }])
    };
    let rdi = || {
        if addr32 {
            regs.gpr[7] & 0xffff_ffff
        } else {
            regs.gpr[7]
        }
    };
    // moffs moves and string stores/loads have no ModRM.
    match byte {
        0xa0..=0xa3 => {
            let addr = c.u64()?;
            let access = if byte >= 0xa2 {
                Access::Write
            } else {
                Access::Read
            };
            return fin(addr, width(byte & 1 == 0), access);
        }
        // stos stores to ES:[rdi]: a segment prefix does not apply, and ES's base is 0.
        0xaa | 0xab => {
            return Some(vec![MemAccess {
                linear: rdi(),
                len: width(byte == 0xaa),
                access: Access::Write,
            }]);
        }
        0xac | 0xad => return fin(regs.gpr[6], width(byte == 0xac), Access::Read),
        // movs reads DS:[rsi] (or the prefix's segment) and writes ES:[rdi]; cmps reads both.
        // With `rep`, the registers hold the iteration that faulted.
        0xa4..=0xa7 => {
            let len = width(byte & 1 == 0);
            let mut both = fin(regs.gpr[6], len, Access::Read)?;
            both.push(MemAccess {
                linear: rdi(),
                len,
                access: if byte <= 0xa5 {
                    Access::Write
                } else {
                    Access::Read
                },
            });
            return Some(both);
        }
        _ => {}
    }
    let (op, two) = if byte == 0x0f {
        (c.u8()?, true)
    } else {
        (byte, false)
    };
    let modrm = c.u8()?;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if md == 3 {
        return None;
    }
    let (access, imm, len) = if let Some((pp, l)) = vex {
        let (a, l0, l1) = vex_map1(op, pp)?;
        (a, Imm::None, if l { l1 } else { l0 })
    } else if two {
        let (a, imm, sse) = two_byte(op, reg)?;
        let len = if sse {
            16
        } else if matches!(op, 0xb6 | 0xbe | 0xb0 | 0xc0) {
            1
        } else if matches!(op, 0xb7 | 0xbf) {
            2
        } else {
            width(false)
        };
        (a, imm, len)
    } else {
        let (a, imm) = one_byte(op, reg)?;
        let byte_op = matches!(
            op,
            0x80 | 0x82 | 0x84 | 0x86 | 0x88 | 0x8a | 0xc0 | 0xc6 | 0xd0 | 0xd2 | 0xf6 | 0xfe
        ) || (op <= 0x3b && op & 1 == 0);
        (a, imm, width(byte_op))
    };
    let r = |n: u8| regs.gpr[usize::from(n & 15)];
    let mut rip_relative = false;
    let mut ea: i64 = 0;
    if rm == 4 {
        let sib = c.u8()?;
        let (scale, index, base) = (
            sib >> 6,
            ((sib >> 3) & 7) | ((rex & 2) << 2),
            (sib & 7) | ((rex & 1) << 3),
        );
        if index != 4 {
            ea = ea.wrapping_add((r(index) << scale) as i64);
        }
        if base & 7 == 5 && md == 0 {
            ea = ea.wrapping_add(c.i32()?);
        } else {
            ea = ea.wrapping_add(r(base) as i64);
        }
    } else if rm == 5 && md == 0 {
        rip_relative = true;
        ea = c.i32()?;
    } else {
        ea = r(rm | ((rex & 1) << 3)) as i64;
    }
    match md {
        1 => ea = ea.wrapping_add(i64::from(c.u8()? as i8)),
        2 => ea = ea.wrapping_add(c.i32()?),
        _ => {}
    }
    let imm_len = match imm {
        Imm::None => 0,
        Imm::B1 => 1,
        Imm::Z if opsize16 && !rex_w => 2,
        Imm::Z => 4,
    };
    if c.i + imm_len > c.b.len() {
        return None;
    }
    c.i += imm_len;
    if rip_relative {
        let next = regs.rip.wrapping_add(c.i as u64);
        ea = ea.wrapping_add(next as i64);
    }
    fin(ea as u64, len, access)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> DecodeRegs {
        let mut r = DecodeRegs {
            rip: 0x1000,
            fs_base: 0x7000_0000,
            ..Default::default()
        };
        for (i, g) in r.gpr.iter_mut().enumerate() {
            *g = 0x4000_0000 + 0x100 * i as u64;
        }
        r
    }

    fn d(code: &[u8]) -> Option<(u64, u32, Access)> {
        decode(code, &regs()).map(|m| (m.linear, m.len, m.access))
    }

    // Encodings below were checked against objdump.
    #[test]
    fn plain_moves() {
        // mov rax, [rbx]
        assert_eq!(d(&[0x48, 0x8b, 0x03]), Some((0x4000_0300, 8, Access::Read)));
        // mov [rbx], rcx
        assert_eq!(
            d(&[0x48, 0x89, 0x0b]),
            Some((0x4000_0300, 8, Access::Write))
        );
        // mov eax, [rsi+0x10]
        assert_eq!(d(&[0x8b, 0x46, 0x10]), Some((0x4000_0610, 4, Access::Read)));
        // mov byte [rdi-1], al
        assert_eq!(
            d(&[0x88, 0x47, 0xff]),
            Some((0x4000_06ff, 1, Access::Write))
        );
        // mov r9, [r12+0x1000]  (REX.WRB, SIB because r12)
        assert_eq!(
            d(&[0x4d, 0x8b, 0x8c, 0x24, 0x00, 0x10, 0x00, 0x00]),
            Some((0x4000_1c00, 8, Access::Read))
        );
        // mov eax, [rbx+rcx*8+0x20]
        assert_eq!(
            d(&[0x8b, 0x44, 0xcb, 0x20]),
            Some((0x4000_0300 + 0x4000_0100 * 8 + 0x20, 4, Access::Read))
        );
        // movabs eax, [0x40002010]
        assert_eq!(
            d(&[0xa1, 0x10, 0x20, 0, 0x40, 0, 0, 0, 0]),
            Some((0x4000_2010, 4, Access::Read))
        );
        // mov word [rax], 0x1234  (66 C7 /0 iw)
        assert_eq!(
            d(&[0x66, 0xc7, 0x00, 0x34, 0x12]),
            Some((0x4000_0000, 2, Access::Write))
        );
    }

    #[test]
    fn rip_relative_accounts_for_the_immediate() {
        // mov dword [rip+0x10], 0x5  → next RIP = 0x1000 + 10
        assert_eq!(
            d(&[0xc7, 0x05, 0x10, 0, 0, 0, 5, 0, 0, 0]),
            Some((0x1000 + 10 + 0x10, 4, Access::Write))
        );
        // mov rax, [rip-0x20]
        assert_eq!(
            d(&[0x48, 0x8b, 0x05, 0xe0, 0xff, 0xff, 0xff]),
            Some((0x1000 + 7 - 0x20, 8, Access::Read))
        );
    }

    #[test]
    fn alu_sse_string_and_segment_forms() {
        // add [rdx], eax (RMW)
        assert_eq!(d(&[0x01, 0x02]), Some((0x4000_0200, 4, Access::Write)));
        // cmp rax, [rdx]
        assert_eq!(d(&[0x48, 0x3b, 0x02]), Some((0x4000_0200, 8, Access::Read)));
        // movzx eax, byte [rsi]
        assert_eq!(d(&[0x0f, 0xb6, 0x06]), Some((0x4000_0600, 1, Access::Read)));
        // movdqu xmm0, [rdi]  (F3 0F 6F)
        assert_eq!(
            d(&[0xf3, 0x0f, 0x6f, 0x07]),
            Some((0x4000_0700, 16, Access::Read))
        );
        // movups [rdi], xmm1
        assert_eq!(
            d(&[0x0f, 0x11, 0x0f]),
            Some((0x4000_0700, 16, Access::Write))
        );
        // rep stosq
        assert_eq!(
            d(&[0xf3, 0x48, 0xab]),
            Some((0x4000_0700, 8, Access::Write))
        );
        // mov rax, fs:[rbx]
        assert_eq!(
            d(&[0x64, 0x48, 0x8b, 0x03]),
            Some((0x7000_0000 + 0x4000_0300, 8, Access::Read))
        );
        // lock cmpxchg [rcx], edx
        assert_eq!(
            d(&[0xf0, 0x0f, 0xb1, 0x11]),
            Some((0x4000_0100, 4, Access::Write))
        );
    }

    #[test]
    fn vex_moves_compilers_emit_for_copies() {
        // vmovdqu ymm0, [rdi]
        assert_eq!(
            d(&[0xc5, 0xfe, 0x6f, 0x07]),
            Some((0x4000_0700, 32, Access::Read))
        );
        // vmovdqu [rdi], xmm1
        assert_eq!(
            d(&[0xc5, 0xfa, 0x7f, 0x0f]),
            Some((0x4000_0700, 16, Access::Write))
        );
        // vmovups ymm0, [rsi+0x20]
        assert_eq!(
            d(&[0xc5, 0xfc, 0x10, 0x46, 0x20]),
            Some((0x4000_0620, 32, Access::Read))
        );
        // vmovdqu ymm8, [r9]  (3-byte VEX: R and B extend the registers)
        assert_eq!(
            d(&[0xc4, 0x41, 0x7e, 0x6f, 0x01]),
            Some((0x4000_0900, 32, Access::Read))
        );
        // vmovntdq [rdx], ymm2
        assert_eq!(
            d(&[0xc5, 0xfd, 0xe7, 0x12]),
            Some((0x4000_0200, 32, Access::Write))
        );
        // vmovss [rax], xmm0
        assert_eq!(
            d(&[0xc5, 0xfa, 0x11, 0x00]),
            Some((0x4000_0000, 4, Access::Write))
        );
        // vaddps (not a move) and map 2 (0F38) are not decoded.
        assert_eq!(d(&[0xc5, 0xfc, 0x58, 0x07]), None);
        assert_eq!(d(&[0xc4, 0xe2, 0x7d, 0x18, 0x07]), None);
    }

    #[test]
    fn string_copies_give_both_operands() {
        let both = |code: &[u8]| {
            decode_operands(code, &regs())
                .iter()
                .map(|m| (m.linear, m.len, m.access))
                .collect::<Vec<_>>()
        };
        // rep movsb: [rsi] read, [rdi] written, a byte each (the faulting iteration's).
        assert_eq!(
            both(&[0xf3, 0xa4]),
            vec![
                (0x4000_0600, 1, Access::Read),
                (0x4000_0700, 1, Access::Write)
            ]
        );
        // rep movsq
        assert_eq!(
            both(&[0xf3, 0x48, 0xa5]),
            vec![
                (0x4000_0600, 8, Access::Read),
                (0x4000_0700, 8, Access::Write)
            ]
        );
        // repe cmpsb reads both; an fs override moves the source only.
        assert_eq!(
            both(&[0x64, 0xf3, 0xa6]),
            vec![
                (0x7000_0000 + 0x4000_0600, 1, Access::Read),
                (0x4000_0700, 1, Access::Read)
            ]
        );
        assert_eq!(
            d(&[0xa5]),
            Some((0x4000_0600, 4, Access::Read)),
            "decode: the first"
        );
    }

    #[test]
    fn unsupported_or_register_forms_are_none() {
        assert_eq!(d(&[0x48, 0x89, 0xd8]), None, "mov rax, rbx");
        assert_eq!(d(&[0x48, 0x8d, 0x03]), None, "lea");
        assert_eq!(d(&[0x62, 0xf1, 0x7c, 0x48, 0x10, 0x07]), None, "EVEX");
        assert_eq!(d(&[0xc5, 0xfe]), None, "truncated VEX");
        assert!(
            decode_operands(&[0xc5, 0xfc, 0x28, 0xc1], &regs()).is_empty(),
            "VEX register form"
        );
        assert_eq!(d(&[0x48, 0x8b]), None, "truncated");
        assert_eq!(d(&[]), None);
    }

    #[test]
    fn a_retired_store_is_found_by_its_length_width_and_address() {
        let r = regs();
        let rbx = r.gpr[3];
        // nop; mov [rbx], rcx — ending at 0x1004.
        let code = [0x90, 0x48, 0x89, 0x0b];
        assert_eq!(
            store_start(&code, 0x1004, &r, 8, |l, _| l == rbx),
            Some(0x1001)
        );
        // Its address is not the exit's: no rewind.
        assert_eq!(store_start(&code, 0x1004, &r, 8, |_, _| false), None);
        // `89 0b` (a 4-byte store) also ends there: with a 4-byte exit both qualify, so no
        // rewind rather than a guess.
        assert_eq!(store_start(&code, 0x1004, &r, 4, |l, _| l == rbx), None);
        // mov dword [rbx], imm32: the immediate is part of the length.
        let imm = [0xc7, 0x03, 0x78, 0x56, 0x34, 0x12];
        assert_eq!(
            store_start(&imm, 0x2006, &r, 4, |l, _| l == rbx),
            Some(0x2000)
        );
        // A load never qualifies.
        let load = [0x48, 0x8b, 0x03];
        assert_eq!(store_start(&load, 0x1003, &r, 8, |_, _| true), None);
        // rip-relative store: the address depends on the start being tried.
        let riprel = [0x48, 0x89, 0x0d, 0x10, 0, 0, 0];
        assert_eq!(
            store_start(&riprel, 0x3007, &r, 8, |l, _| l == 0x3007 + 0x10),
            Some(0x3000)
        );
    }
}
