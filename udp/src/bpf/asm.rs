//! A small eBPF assembler: instructions by name, jumps to labels.
//!
//! Enough for the kernel data path's two programs and the TUN steering
//! program: 64-bit ALU, loads and stores, byte-order conversion, jumps
//! (64- and 32-bit compares), helper calls and map references. Jump
//! offsets are worked out from labels when the program is finished, so a
//! program is written top to bottom without counting instructions.

/// One eBPF instruction (`struct bpf_insn`), as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst_reg (low 4 bits), src_reg (high 4 bits).
    pub regs: u8,
    /// Signed offset (memory access, jump).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

/// A register, `r0`..`r10` (`r10` is the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

/// Return value, helper results.
pub const R0: Reg = Reg(0);
/// First helper argument; the program's context on entry.
pub const R1: Reg = Reg(1);
/// Second helper argument.
pub const R2: Reg = Reg(2);
/// Third helper argument.
pub const R3: Reg = Reg(3);
/// Fourth helper argument.
pub const R4: Reg = Reg(4);
/// Fifth helper argument.
pub const R5: Reg = Reg(5);
/// Callee-saved.
pub const R6: Reg = Reg(6);
/// Callee-saved.
pub const R7: Reg = Reg(7);
/// Callee-saved.
pub const R8: Reg = Reg(8);
/// Callee-saved.
pub const R9: Reg = Reg(9);
/// The frame pointer: the stack is `r10 - 512 .. r10`.
pub const FP: Reg = Reg(10);

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 1 byte.
    B,
    /// 2 bytes.
    H,
    /// 4 bytes.
    W,
    /// 8 bytes.
    Dw,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::Dw => 0x18,
        }
    }
}

/// 64-bit arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    /// `+=`
    Add = 0x00,
    /// `-=`
    Sub = 0x10,
    /// `&=`
    And = 0x50,
    /// `>>=` (logical)
    Rsh = 0x70,
    /// `^=`
    Xor = 0xa0,
    /// `=`
    Mov = 0xb0,
}

/// Jump conditions (unsigned compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// `==`
    Eq = 0x10,
    /// `!=`
    Ne = 0x50,
    /// `<`
    Lt = 0xa0,
    /// `<=`
    Le = 0xb0,
}

/// A jump target, bound to a place with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A jump to a label never bound.
    #[error("label {0} is jumped to but never placed")]
    Unbound(usize),
    /// A label placed twice.
    #[error("label {0} is placed twice")]
    Rebound(usize),
    /// A jump farther than a 16-bit offset reaches.
    #[error("a jump at instruction {0} is out of range")]
    TooFar(usize),
}

const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU32: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const K: u8 = 0x00;
const X: u8 = 0x08;
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// A program being written.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    /// Where each label was placed.
    labels: Vec<Option<usize>>,
    /// Jumps to fix up: (instruction, label).
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: (src.0 << 4) | (dst.0 & 0x0f),
            off,
            imm,
        });
    }

    /// A new label, placed later with [`Asm::bind`].
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` before the next instruction.
    pub fn bind(&mut self, label: Label) -> Result<(), AsmError> {
        match self.labels.get_mut(label.0) {
            Some(slot @ None) => {
                *slot = Some(self.insns.len());
                Ok(())
            }
            _ => Err(AsmError::Rebound(label.0)),
        }
    }

    /// `dst op= imm` (64-bit).
    pub fn alu_imm(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.push(ALU64 | op as u8 | K, dst, R0, 0, imm);
    }

    /// `dst op= src` (64-bit).
    pub fn alu_reg(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.push(ALU64 | op as u8 | X, dst, src, 0, 0);
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.alu_imm(Alu::Mov, dst, imm);
    }

    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.alu_reg(Alu::Mov, dst, src);
    }

    /// `dst = htobe16(dst)` (the low 16 bits, byte-swapped on a
    /// little-endian machine): a host value to network order, or back.
    pub fn be16(&mut self, dst: Reg) {
        self.push(ALU32 | END | TO_BE, dst, R0, 0, 16);
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(LDX | MEM | size.bits(), dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.push(STX | MEM | size.bits(), dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.push(ST | MEM | size.bits(), dst, R0, off, imm);
    }

    /// `dst = <the map with descriptor fd>` (a 64-bit immediate load the
    /// kernel rewrites into the map's address).
    pub fn load_map(&mut self, dst: Reg, fd: i32) {
        self.push(LD | IMM | Size::Dw.bits(), dst, Reg(PSEUDO_MAP_FD), 0, fd);
        self.push(0, R0, R0, 0, 0);
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.push(code, dst, src, 0, imm);
    }

    /// `if dst cond imm goto to`, comparing 64 bits (imm sign-extended).
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, to: Label) {
        self.jump(JMP | cond as u8 | K, dst, R0, imm, to);
    }

    /// `if (u32)dst cond (u32)imm goto to`: for 32-bit values (addresses
    /// in network order) whose top bit may be set.
    pub fn jump32_imm(&mut self, cond: Cond, dst: Reg, imm: u32, to: Label) {
        self.jump(JMP32 | cond as u8 | K, dst, R0, imm as i32, to);
    }

    /// `if dst cond src goto to`.
    pub fn jump_reg(&mut self, cond: Cond, dst: Reg, src: Reg, to: Label) {
        self.jump(JMP | cond as u8 | X, dst, src, 0, to);
    }

    /// `goto to`.
    pub fn goto(&mut self, to: Label) {
        self.jump(JMP, R0, R0, 0, to);
    }

    /// Calls helper number `helper` (arguments in r1..r5, result in r0;
    /// r1..r5 are clobbered).
    pub fn call(&mut self, helper: i32) {
        self.push(JMP | CALL, R0, R0, 0, helper);
    }

    /// Returns r0.
    pub fn exit(&mut self) {
        self.push(JMP | EXIT, R0, R0, 0, 0);
    }

    /// The program, with every jump's offset filled in.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for &(at, Label(l)) in &self.jumps {
            let target = self
                .labels
                .get(l)
                .copied()
                .flatten()
                .ok_or(AsmError::Unbound(l))?;
            let off = target as i64 - at as i64 - 1;
            let off = i16::try_from(off).map_err(|_| AsmError::TooFar(at))?;
            if let Some(insn) = self.insns.get_mut(at) {
                insn.off = off;
            }
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_kernels() {
        let mut a = Asm::new();
        a.mov_imm(R0, 7); // BPF_ALU64 | BPF_MOV | BPF_K
        a.mov(R6, R1); // BPF_ALU64 | BPF_MOV | BPF_X
        a.load(Size::W, R2, R6, 16); // BPF_LDX | BPF_MEM | BPF_W
        a.store(Size::H, FP, -8, R2); // BPF_STX | BPF_MEM | BPF_H
        a.store_imm(Size::B, FP, -1, 0x45); // BPF_ST | BPF_MEM | BPF_B
        a.be16(R2); // BPF_ALU | BPF_END | BPF_TO_BE
        a.call(26);
        a.load_map(R1, 9);
        a.exit();
        let p = a.finish().unwrap();
        let codes: Vec<u8> = p.iter().map(|i| i.code).collect();
        assert_eq!(
            codes,
            [0xb7, 0xbf, 0x61, 0x6b, 0x72, 0xdc, 0x85, 0x18, 0x00, 0x95]
        );
        assert_eq!(p[1].regs, 0x16); // dst r6, src r1
        assert_eq!((p[3].regs, p[3].off), (0x2a, -8));
        assert_eq!((p[7].regs, p[7].imm), (0x11, 9)); // src = PSEUDO_MAP_FD
        assert_eq!(p[5].imm, 16);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn jumps_land_on_their_labels() {
        let mut a = Asm::new();
        let out = a.label();
        let back = a.label();
        a.bind(back).unwrap();
        a.jump_imm(Cond::Ne, R2, 1, out); // 0
        a.mov_imm(R0, 1); // 1
        a.jump32_imm(Cond::Eq, R2, 0xac12_0003, back); // 2
        a.goto(out); // 3
        a.bind(out).unwrap();
        a.exit(); // 4
        let p = a.finish().unwrap();
        assert_eq!((p[0].code, p[0].off), (0x55, 3));
        assert_eq!(
            (p[2].code, p[2].off, p[2].imm),
            (0x16, -3, 0xac12_0003_u32 as i32)
        );
        assert_eq!((p[3].code, p[3].off), (0x05, 0));
    }

    #[test]
    fn unbound_and_rebound_labels_are_errors() {
        let mut a = Asm::new();
        let l = a.label();
        a.goto(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));
        let mut a = Asm::new();
        let l = a.label();
        a.bind(l).unwrap();
        assert_eq!(a.bind(l), Err(AsmError::Rebound(0)));
    }
}
