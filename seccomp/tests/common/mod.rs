//! Helpers shared by the integration tests: a classic-BPF interpreter for seccomp programs.

#![allow(dead_code)]

use libc::sock_filter;

/// The input of a seccomp program.
#[derive(Debug, Clone, Copy)]
pub struct SeccompData {
    pub nr: u32,
    pub arch: u32,
    pub ip: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    fn word(&self, offset: u32) -> Option<u32> {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&self.nr.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.arch.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.ip.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let at = offset as usize;
        let w = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    }
}

/// Runs `program` on `data` as the kernel would; `Err` for anything the kernel would reject.
pub fn run(program: &[sock_filter], data: &SeccompData) -> Result<u32, String> {
    run_traced(program, data, &mut Vec::new())
}

/// [`run`], recording in `loads` the offset of every word of `seccomp_data` the program reads.
pub fn run_traced(program: &[sock_filter], data: &SeccompData, loads: &mut Vec<u32>) -> Result<u32, String> {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    loop {
        let insn = program.get(pc).ok_or_else(|| format!("pc {pc} out of program"))?;
        pc += 1;
        let k = insn.k;
        match insn.code {
            0x20 => {
                loads.push(k);
                a = data.word(k).ok_or("bad load")?; // ld [k]
            }
            0x00 => a = k,                                          // ld #k
            0x80 => a = 64,                                         // ld len
            0x60 => a = *mem.get(k as usize).ok_or("bad mem")?,     // ld M[k]
            0x01 => x = k,                                          // ldx #k
            0x81 => x = 64,                                         // ldx len
            0x61 => x = *mem.get(k as usize).ok_or("bad mem")?,     // ldx M[k]
            0x02 => *mem.get_mut(k as usize).ok_or("bad mem")? = a, // st
            0x03 => *mem.get_mut(k as usize).ok_or("bad mem")? = x, // stx
            0x04 => a = a.wrapping_add(k),
            0x0c => a = a.wrapping_add(x),
            0x14 => a = a.wrapping_sub(k),
            0x1c => a = a.wrapping_sub(x),
            0x24 => a = a.wrapping_mul(k),
            0x2c => a = a.wrapping_mul(x),
            0x34 => a = a.checked_div(k).ok_or("div by 0")?,
            0x3c => a = a.checked_div(x).ok_or("div by 0")?,
            0x44 => a |= k,
            0x4c => a |= x,
            0x54 => a &= k,
            0x5c => a &= x,
            0x64 => a = a.checked_shl(k).unwrap_or(0),
            0x6c => a = a.checked_shl(x).unwrap_or(0),
            0x74 => a = a.checked_shr(k).unwrap_or(0),
            0x7c => a = a.checked_shr(x).unwrap_or(0),
            0x84 => a = a.wrapping_neg(),
            0x94 => a = a.checked_rem(k).ok_or("mod by 0")?,
            0xa4 => a ^= k,
            0xac => a ^= x,
            0x05 => pc += k as usize,
            0x15 | 0x1d | 0x25 | 0x2d | 0x35 | 0x3d | 0x45 | 0x4d => {
                let operand = if insn.code & 0x08 != 0 { x } else { k };
                let taken = match insn.code & 0xf0 {
                    0x10 => a == operand,
                    0x20 => a > operand,
                    0x30 => a >= operand,
                    _ => a & operand != 0,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            0x06 => return Ok(k),
            0x16 => return Ok(a),
            0x07 => x = a,
            0x87 => a = x,
            other => return Err(format!("unknown opcode {other:#x} at {}", pc - 1)),
        }
    }
}

/// Reads a program exported by `seccomp_export_bpf`.
pub fn parse_program(bytes: &[u8]) -> Vec<sock_filter> {
    bytes
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}
