//! Classic BPF: instruction encoding, a small assembler with forward labels, and the checks the
//! kernel's verifier applies to a seccomp program.
//!
//! Conditional jumps in classic BPF reach at most 255 instructions ahead. The assembler lays the
//! program out, and wherever a conditional target is farther it routes that edge through an
//! unconditional `ja` (32-bit offset) placed right after the jump, repeating until the layout is
//! stable; only the few top levels of a big search tree ever need one.

use libc::sock_filter;

/// Instruction classes and fields (linux/bpf_common.h).
pub mod op {
    /// Load into the accumulator.
    pub const LD: u16 = 0x00;
    /// Load into the index register.
    pub const LDX: u16 = 0x01;
    /// Store the accumulator in scratch memory.
    pub const ST: u16 = 0x02;
    /// Store the index register in scratch memory.
    pub const STX: u16 = 0x03;
    /// Arithmetic on the accumulator.
    pub const ALU: u16 = 0x04;
    /// Jumps.
    pub const JMP: u16 = 0x05;
    /// Return.
    pub const RET: u16 = 0x06;
    /// Register transfers.
    pub const MISC: u16 = 0x07;
    /// 32-bit word.
    pub const W: u16 = 0x00;
    /// Absolute offset into `seccomp_data`.
    pub const ABS: u16 = 0x20;
    /// Immediate.
    pub const IMM: u16 = 0x00;
    /// Scratch memory.
    pub const MEM: u16 = 0x60;
    /// Packet length (the size of `seccomp_data` for seccomp).
    pub const LEN: u16 = 0x80;
    /// Operand is the constant `k`.
    pub const K: u16 = 0x00;
    /// Operand is the index register.
    pub const X: u16 = 0x08;
    /// Operand is the accumulator (for `RET`).
    pub const A: u16 = 0x10;
    /// Bitwise and.
    pub const AND: u16 = 0x50;
    /// Unconditional jump.
    pub const JA: u16 = 0x00;
    /// Jump if equal.
    pub const JEQ: u16 = 0x10;
    /// Jump if greater (unsigned).
    pub const JGT: u16 = 0x20;
    /// Jump if greater or equal (unsigned).
    pub const JGE: u16 = 0x30;
    /// Jump if any bit of the operand is set.
    pub const JSET: u16 = 0x40;
}

/// The kernel's limit on program length (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;
/// `sizeof(struct seccomp_data)`.
pub const SECCOMP_DATA_LEN: u32 = 64;

/// A statement (no jump).
pub fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

/// A jump with resolved offsets.
pub fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A forward jump target inside an [`Assembler`] program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Item {
    Stmt(sock_filter),
    Cond { code: u16, k: u32, jt: Label, jf: Label },
    Ja(Label),
    Bind(Label),
}

/// Builds a program from statements and jumps to labels bound later.
#[derive(Default)]
pub struct Assembler {
    items: Vec<Item>,
    labels: usize,
}

impl Assembler {
    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Binds `label` to the next instruction emitted.
    pub fn bind(&mut self, label: Label) {
        self.items.push(Item::Bind(label));
    }

    /// Emits a statement.
    pub fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Stmt(stmt(code, k)));
    }

    /// Emits `A = seccomp_data[offset]`.
    pub fn load(&mut self, offset: u32) {
        self.stmt(op::LD | op::W | op::ABS, offset);
    }

    /// Emits `return k`.
    pub fn ret(&mut self, k: u32) {
        self.stmt(op::RET | op::K, k);
    }

    /// Emits a conditional jump comparing the accumulator with `k`.
    pub fn cond(&mut self, cmp: u16, k: u32, jt: Label, jf: Label) {
        self.items.push(Item::Cond { code: op::JMP | cmp | op::K, k, jt, jf });
    }

    /// Emits an unconditional jump.
    pub fn ja(&mut self, target: Label) {
        self.items.push(Item::Ja(target));
    }

    /// Resolves the labels and returns the program.
    ///
    /// Fails if a label was used but never bound, or bound behind a jump to it.
    pub fn finish(self) -> Result<Vec<sock_filter>, String> {
        // far[i] = (jt goes through a trampoline, jf goes through a trampoline)
        let mut far = vec![(false, false); self.items.len()];
        loop {
            let (starts, bound) = self.layout(&far);
            let mut changed = false;
            for (i, item) in self.items.iter().enumerate() {
                if let Item::Cond { jt, jf, .. } = item {
                    let next = starts[i] + 1;
                    let (far_t, far_f) = &mut far[i];
                    for (target, is_far) in [(jt, far_t), (jf, far_f)] {
                        let to = bound[target.0].ok_or("unbound label")?;
                        if to < next {
                            return Err("backward jump".into());
                        }
                        if !*is_far && to - next > 255 {
                            *is_far = true;
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return self.emit(&far, &starts, &bound);
            }
        }
    }

    /// Start position of each item and the position of each label.
    fn layout(&self, far: &[(bool, bool)]) -> (Vec<usize>, Vec<Option<usize>>) {
        let mut starts = Vec::with_capacity(self.items.len());
        let mut bound = vec![None; self.labels];
        let mut pos = 0;
        for (i, item) in self.items.iter().enumerate() {
            starts.push(pos);
            pos += match item {
                Item::Bind(label) => {
                    bound[label.0] = Some(pos);
                    0
                }
                Item::Cond { .. } => 1 + usize::from(far[i].0) + usize::from(far[i].1),
                Item::Stmt(_) | Item::Ja(_) => 1,
            };
        }
        (starts, bound)
    }

    fn emit(
        &self,
        far: &[(bool, bool)],
        starts: &[usize],
        bound: &[Option<usize>],
    ) -> Result<Vec<sock_filter>, String> {
        let target = |label: &Label| bound[label.0].ok_or_else(|| "unbound label".to_string());
        let offset = |from: usize, to: usize| -> Result<u8, String> {
            to.checked_sub(from).and_then(|d| u8::try_from(d).ok()).ok_or_else(|| "jump out of range".to_string())
        };
        let mut out = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            match item {
                Item::Bind(_) => {}
                Item::Stmt(insn) => out.push(*insn),
                Item::Ja(label) => {
                    let from = starts[i] + 1;
                    let to = target(label)?;
                    let k = to.checked_sub(from).ok_or("backward jump")?;
                    out.push(stmt(op::JMP | op::JA, u32::try_from(k).map_err(|e| e.to_string())?));
                }
                Item::Cond { code, k, jt, jf } => {
                    let next = starts[i] + 1;
                    let (far_t, far_f) = far[i];
                    // trampolines sit right after the jump: jt's first, then jf's
                    let jt_off = if far_t { 0 } else { offset(next, target(jt)?)? };
                    let jf_off = if far_f { u8::from(far_t) } else { offset(next, target(jf)?)? };
                    out.push(jump(*code, *k, jt_off, jf_off));
                    let mut pos = next;
                    for (label, is_far) in [(jt, far_t), (jf, far_f)] {
                        if is_far {
                            let k = target(label)?.checked_sub(pos + 1).ok_or("backward jump")?;
                            out.push(stmt(op::JMP | op::JA, u32::try_from(k).map_err(|e| e.to_string())?));
                            pos += 1;
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Checks a seccomp program against the rules of the kernel's verifier (`bpf_check_classic` and
/// `seccomp_check_filter`): length, known opcodes, loads inside `seccomp_data`, jumps inside the
/// program, and a return as the last instruction.
pub fn verify(program: &[sock_filter]) -> Result<(), String> {
    if program.is_empty() || program.len() > MAX_INSNS {
        return Err(format!("length {} is not within 1..={MAX_INSNS}", program.len()));
    }
    let len = program.len();
    for (pc, insn) in program.iter().enumerate() {
        let code = insn.code;
        let in_range = |off: u32| pc + 1 + (off as usize) < len;
        match code & 0x07 {
            op::LD | op::LDX => {
                let mode = code & 0xe0;
                let size = code & 0x18;
                match mode {
                    op::ABS if code & 0x07 == op::LD => {
                        if size != op::W || insn.k % 4 != 0 || insn.k >= SECCOMP_DATA_LEN {
                            return Err(format!("instruction {pc}: bad load of seccomp_data[{}]", insn.k));
                        }
                    }
                    op::IMM | op::LEN if size == op::W => {}
                    op::MEM if size == op::W && insn.k < 16 => {}
                    _ => return Err(format!("instruction {pc}: unsupported load {code:#x}")),
                }
            }
            op::ST | op::STX => {
                if insn.k >= 16 {
                    return Err(format!("instruction {pc}: scratch slot {} out of range", insn.k));
                }
            }
            op::ALU => {
                let alu = code & 0xf0;
                if (alu == 0x30 || alu == 0x90) && code & op::X == 0 && insn.k == 0 {
                    return Err(format!("instruction {pc}: division by zero"));
                }
                if alu > 0xa0 {
                    return Err(format!("instruction {pc}: unknown alu op {code:#x}"));
                }
            }
            op::JMP => {
                let jmp = code & 0xf0;
                if jmp == op::JA {
                    if !in_range(insn.k) {
                        return Err(format!("instruction {pc}: ja out of range"));
                    }
                } else if matches!(jmp, op::JEQ | op::JGT | op::JGE | op::JSET) {
                    if !in_range(u32::from(insn.jt)) || !in_range(u32::from(insn.jf)) {
                        return Err(format!("instruction {pc}: jump out of range"));
                    }
                } else {
                    return Err(format!("instruction {pc}: unknown jump {code:#x}"));
                }
            }
            op::RET => {
                if code & 0x18 != op::K && code & 0x18 != op::A {
                    return Err(format!("instruction {pc}: bad return {code:#x}"));
                }
            }
            _ => {
                if code != op::MISC && code != (op::MISC | 0x80) {
                    return Err(format!("instruction {pc}: unknown opcode {code:#x}"));
                }
            }
        }
    }
    let last = program[len - 1];
    if last.code & 0x07 != op::RET {
        return Err("the last instruction is not a return".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_jumps_get_trampolines() {
        let mut asm = Assembler::default();
        let (far, near) = (asm.label(), asm.label());
        asm.load(0);
        asm.cond(op::JEQ, 1, far, near);
        asm.bind(near);
        for _ in 0..300 {
            asm.ret(1);
        }
        asm.bind(far);
        asm.ret(2);
        let prog = asm.finish().expect("assembles");
        verify(&prog).expect("valid");
        assert_eq!(prog.len(), 1 + 2 + 300 + 1);
        assert_eq!((prog[1].jt, prog[1].jf), (0, 1));
        assert_eq!(prog[2].code, op::JMP | op::JA);
        assert_eq!(2 + 1 + prog[2].k as usize, prog.len() - 1);
    }

    #[test]
    fn verify_rejects_bad_programs() {
        assert!(verify(&[]).is_err());
        assert!(verify(&[stmt(op::LD | op::W | op::ABS, 0)]).is_err());
        assert!(verify(&[jump(op::JMP | op::JEQ, 0, 5, 0), stmt(op::RET, 0)]).is_err());
        assert!(verify(&[stmt(op::LD | op::W | op::ABS, 64), stmt(op::RET, 0)]).is_err());
        assert!(verify(&[stmt(op::RET, 0)]).is_ok());
    }
}
