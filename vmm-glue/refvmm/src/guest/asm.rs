//! A tiny x86-64 assembler: exactly the instructions the test guest uses, each hand-encoded
//! (opcode bytes per the Intel SDM, noted next to each method), with labels and rel32 fix-ups.

/// A general-purpose register (its 3-bit encoding; only the legacy eight are used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// rax / eax.
    Rax = 0,
    /// rcx / ecx.
    Rcx = 1,
    /// rdx / edx.
    Rdx = 2,
    /// rbx / ebx.
    Rbx = 3,
}

/// Condition of a conditional jump (the low nibble of `0F 8x`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    /// Carry clear (`jnc` / `jae`).
    NotCarry = 0x3,
    /// Zero / equal.
    Zero = 0x4,
    /// Not zero / not equal.
    NotZero = 0x5,
}

/// A jump target, bound once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// An assembler emitting code that will run at guest address `base`.
#[derive(Debug)]
pub struct Asm {
    base: u64,
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    /// An empty program loaded at `base`.
    pub fn new(base: u64) -> Self {
        Asm {
            base,
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    /// Guest address of the next byte.
    pub fn here(&self) -> u64 {
        self.base + self.code.len() as u64
    }

    /// A new unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the current position.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    /// Guest address of a bound label.
    pub fn address(&self, l: Label) -> Option<u64> {
        self.labels[l.0].map(|p| self.base + p as u64)
    }

    /// Resolves the jumps and returns the code; `None` if a label used was never bound.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        for &(pos, l) in &self.fixups {
            let target = self.labels[l.0]? as i64;
            let rel = (target - (pos as i64 + 4)) as i32;
            self.code[pos..pos + 4].copy_from_slice(&rel.to_le_bytes());
        }
        Some(self.code)
    }

    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    fn rel32(&mut self, l: Label) -> &mut Self {
        self.fixups.push((self.code.len(), l));
        self.b(&[0; 4])
    }

    /// `mov r32, imm32` (`B8+r id`; zero-extends into the 64-bit register).
    pub fn mov_r32_imm(&mut self, r: Reg, imm: u32) -> &mut Self {
        self.b(&[0xb8 + r as u8]).b(&imm.to_le_bytes())
    }

    /// `mov r64, imm64` (`REX.W B8+r io`).
    pub fn mov_r64_imm(&mut self, r: Reg, imm: u64) -> &mut Self {
        self.b(&[0x48, 0xb8 + r as u8]).b(&imm.to_le_bytes())
    }

    /// `mov eax, [moffs64]` (`A1` with a 64-bit absolute address).
    pub fn load_eax_abs(&mut self, addr: u64) -> &mut Self {
        self.b(&[0xa1]).b(&addr.to_le_bytes())
    }

    /// `mov [moffs64], eax` (`A3` with a 64-bit absolute address).
    pub fn store_eax_abs(&mut self, addr: u64) -> &mut Self {
        self.b(&[0xa3]).b(&addr.to_le_bytes())
    }

    /// `mov rax, [rbx]` (`REX.W 8B /r`, ModRM 00 000 011).
    pub fn load_rax_from_rbx(&mut self) -> &mut Self {
        self.b(&[0x48, 0x8b, 0x03])
    }

    /// `mov rax, [moffs64]` (`REX.W A1` with a 64-bit absolute address).
    pub fn load_rax_abs(&mut self, addr: u64) -> &mut Self {
        self.b(&[0x48, 0xa1]).b(&addr.to_le_bytes())
    }

    /// `mov rbx, rax` (`REX.W 89 /r`, ModRM 11 000 011).
    pub fn mov_rbx_rax(&mut self) -> &mut Self {
        self.b(&[0x48, 0x89, 0xc3])
    }

    /// `mov rcx, rax` (`REX.W 89 /r`, ModRM 11 000 001).
    pub fn mov_rcx_rax(&mut self) -> &mut Self {
        self.b(&[0x48, 0x89, 0xc1])
    }

    /// `test rax, rax` (`REX.W 85 /r`, ModRM 11 000 000).
    pub fn test_rax_rax(&mut self) -> &mut Self {
        self.b(&[0x48, 0x85, 0xc0])
    }

    /// `mov rsp, imm64` (`REX.W B8+4 io`).
    pub fn mov_rsp_imm(&mut self, imm: u64) -> &mut Self {
        self.b(&[0x48, 0xbc]).b(&imm.to_le_bytes())
    }

    /// `mov [rbx], rcx` (`REX.W 89 /r`, ModRM 00 001 011).
    pub fn store_rcx_to_rbx(&mut self) -> &mut Self {
        self.b(&[0x48, 0x89, 0x0b])
    }

    /// `mov rax, [rsp + disp8]` (`REX.W 8B /r`, ModRM 01 000 100, SIB 00 100 100).
    pub fn load_rax_from_rsp(&mut self, disp: u8) -> &mut Self {
        self.b(&[0x48, 0x8b, 0x44, 0x24, disp])
    }

    /// `out imm8, eax` (`E7 ib`).
    pub fn out_eax(&mut self, port: u8) -> &mut Self {
        self.b(&[0xe7, port])
    }

    /// `mov eax, imm32; out port, eax`.
    pub fn report(&mut self, port: u8, value: u32) -> &mut Self {
        self.mov_r32_imm(Reg::Rax, value).out_eax(port)
    }

    /// `cpuid` (`0F A2`).
    pub fn cpuid(&mut self) -> &mut Self {
        self.b(&[0x0f, 0xa2])
    }

    /// `wrmsr` (`0F 30`).
    pub fn wrmsr(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x30])
    }

    /// `rdmsr` (`0F 32`).
    pub fn rdmsr(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x32])
    }

    /// `mov ecx, msr; mov eax, lo; mov edx, hi; wrmsr`.
    pub fn write_msr(&mut self, msr: u32, value: u64) -> &mut Self {
        self.mov_r32_imm(Reg::Rcx, msr)
            .mov_r32_imm(Reg::Rax, value as u32)
            .mov_r32_imm(Reg::Rdx, (value >> 32) as u32)
            .wrmsr()
    }

    /// `sti` (`FB`).
    pub fn sti(&mut self) -> &mut Self {
        self.b(&[0xfb])
    }

    /// `cli` (`FA`).
    pub fn cli(&mut self) -> &mut Self {
        self.b(&[0xfa])
    }

    /// `hlt` (`F4`).
    pub fn hlt(&mut self) -> &mut Self {
        self.b(&[0xf4])
    }

    /// `pause` (`F3 90`), allowed at any privilege level.
    pub fn pause(&mut self) -> &mut Self {
        self.b(&[0xf3, 0x90])
    }

    /// `lea rax, [rip + rel32]` to a label (`REX.W 8D /r`, ModRM 00 000 101).
    pub fn lea_rax_label(&mut self, l: Label) -> &mut Self {
        self.b(&[0x48, 0x8d, 0x05]).rel32(l)
    }

    /// `iretq` (`REX.W CF`).
    pub fn iretq(&mut self) -> &mut Self {
        self.b(&[0x48, 0xcf])
    }

    /// `mov rax, cr2` (`0F 20 /r`, ModRM 11 010 000).
    pub fn mov_rax_cr2(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x20, 0xd0])
    }

    /// `mov rax, cr4` (`0F 20 /r`, ModRM 11 100 000).
    pub fn mov_rax_cr4(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x20, 0xe0])
    }

    /// `mov cr4, rax` (`0F 22 /r`, ModRM 11 100 000).
    pub fn mov_cr4_rax(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x22, 0xe0])
    }

    /// `or rax, imm32` (`REX.W 0D id`, sign-extended).
    pub fn or_rax_imm(&mut self, imm: u32) -> &mut Self {
        self.b(&[0x48, 0x0d]).b(&imm.to_le_bytes())
    }

    /// `bt eax, imm8` (`0F BA /4 ib`, ModRM 11 100 000).
    pub fn bt_eax(&mut self, bit: u8) -> &mut Self {
        self.b(&[0x0f, 0xba, 0xe0, bit])
    }

    /// `cmp eax, imm32` (`3D id`).
    pub fn cmp_eax_imm(&mut self, imm: u32) -> &mut Self {
        self.b(&[0x3d]).b(&imm.to_le_bytes())
    }

    /// `cmp eax, ecx` (`39 /r`, ModRM 11 001 000).
    pub fn cmp_eax_ecx(&mut self) -> &mut Self {
        self.b(&[0x39, 0xc8])
    }

    /// `test eax, imm32` (`A9 id`).
    pub fn test_eax_imm(&mut self, imm: u32) -> &mut Self {
        self.b(&[0xa9]).b(&imm.to_le_bytes())
    }

    /// `mov ecx, eax` (`89 /r`, ModRM 11 000 001).
    pub fn mov_ecx_eax(&mut self) -> &mut Self {
        self.b(&[0x89, 0xc1])
    }

    /// `mov eax, edx` (`89 /r`, ModRM 11 010 000).
    pub fn mov_eax_edx(&mut self) -> &mut Self {
        self.b(&[0x89, 0xd0])
    }

    /// `shr rax, 32` (`REX.W C1 /5 ib`, ModRM 11 101 000).
    pub fn shr_rax_32(&mut self) -> &mut Self {
        self.b(&[0x48, 0xc1, 0xe8, 32])
    }

    /// `xor r32, r32` (`31 /r`, ModRM 11 r r).
    pub fn zero(&mut self, r: Reg) -> &mut Self {
        let r = r as u8;
        self.b(&[0x31, 0xc0 | (r << 3) | r])
    }

    /// `push r64` (`50+r`).
    pub fn push(&mut self, r: Reg) -> &mut Self {
        self.b(&[0x50 + r as u8])
    }

    /// `pop r64` (`58+r`).
    pub fn pop(&mut self, r: Reg) -> &mut Self {
        self.b(&[0x58 + r as u8])
    }

    /// `add rsp, imm8` (`REX.W 83 /0 ib`, ModRM 11 000 100).
    pub fn add_rsp(&mut self, imm: u8) -> &mut Self {
        self.b(&[0x48, 0x83, 0xc4, imm])
    }

    /// `jmp rel32` (`E9 cd`).
    pub fn jmp(&mut self, l: Label) -> &mut Self {
        self.b(&[0xe9]).rel32(l)
    }

    /// `jcc rel32` (`0F 80+cc cd`).
    pub fn jcc(&mut self, c: Cond, l: Label) -> &mut Self {
        self.b(&[0x0f, 0x80 + c as u8]).rel32(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_of_representative_instructions() {
        let mut a = Asm::new(0x1000);
        a.mov_r64_imm(Reg::Rbx, 0x4000_2010)
            .load_rax_from_rbx()
            .out_eax(0xe8)
            .shr_rax_32();
        let code = a.finish().expect("no labels");
        assert_eq!(
            code,
            [
                0x48, 0xbb, 0x10, 0x20, 0, 0x40, 0, 0, 0, 0, 0x48, 0x8b, 0x03, 0xe7, 0xe8, 0x48,
                0xc1, 0xe8, 0x20
            ]
        );
        let mut a = Asm::new(0);
        a.zero(Reg::Rdx)
            .zero(Reg::Rax)
            .push(Reg::Rcx)
            .pop(Reg::Rbx)
            .iretq();
        assert_eq!(
            a.finish().expect("no labels"),
            [0x31, 0xd2, 0x31, 0xc0, 0x51, 0x5b, 0x48, 0xcf]
        );
    }

    #[test]
    fn encodings_of_the_storm_loop_instructions() {
        let mut a = Asm::new(0);
        a.load_rax_abs(0xc000)
            .mov_rbx_rax()
            .mov_rcx_rax()
            .test_rax_rax()
            .mov_rsp_imm(0x1f000);
        let code = a.finish().expect("no labels");
        assert_eq!(
            code,
            [
                0x48, 0xa1, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x48, 0x89, 0xc3, 0x48, 0x89, 0xc1, 0x48,
                0x85, 0xc0, 0x48, 0xbc, 0, 0xf0, 0x01, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn jumps_resolve_backwards_and_forwards() {
        let mut a = Asm::new(0x2000);
        let top = a.label();
        let end = a.label();
        a.bind(top);
        a.jcc(Cond::Zero, end); // 6 bytes at 0
        a.jmp(top); // 5 bytes at 6: rel = 0 - 11
        a.bind(end);
        assert_eq!(a.address(end), Some(0x200b));
        let code = a.finish().expect("bound");
        assert_eq!(&code[0..6], &[0x0f, 0x84, 5, 0, 0, 0]);
        assert_eq!(&code[6..11], &[0xe9, 0xf5, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn unbound_label_is_refused() {
        let mut a = Asm::new(0);
        let l = a.label();
        a.jmp(l);
        assert!(a.finish().is_none());
    }
}
