//! Compiles OCI device rules into a `BPF_PROG_TYPE_CGROUP_DEVICE` program.
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! where `access_type` is `(access << 16) | type`, and returns 1 to allow, 0 to deny.
//!
//! Semantics, the same as the cgroup v1 devices controller and runc: rules are read in order and
//! the last one that matches decides; nothing matching means deny. An allow rule matches when it
//! grants every requested access; a deny rule matches when it forbids any requested access (so
//! `deny c 1:3 w` refuses an open for read-write even after an `allow a *:* rwm`).

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

/// `BPF_DEVCG_DEV_BLOCK`.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`.
pub const ACC_MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const ACC_READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high nibble.
    pub regs: u8,
    /// Jump offset or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

// Opcodes used (see include/uapi/linux/bpf.h and bpf_common.h).
pub(crate) const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(crate) const ALU32_AND_K: u8 = 0x54;
pub(crate) const ALU32_RSH_K: u8 = 0x74;
pub(crate) const ALU32_MOV_K: u8 = 0xb4;
pub(crate) const ALU32_MOV_X: u8 = 0xbc;
pub(crate) const JMP32_JNE_K: u8 = 0x56;
pub(crate) const JMP32_JNE_X: u8 = 0x5e;
pub(crate) const JMP32_JEQ_K: u8 = 0x16;
pub(crate) const JMP_EXIT: u8 = 0x95;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2; // device type
const R3: u8 = 3; // requested access
const R4: u8 = 4; // major
const R5: u8 = 5; // minor

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// A device rule in the program's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub allow: bool,
    /// `DEV_BLOCK`, `DEV_CHAR`, or `None` for all.
    pub dev_type: Option<u32>,
    /// Major number, `None` for any.
    pub major: Option<u32>,
    /// Minor number, `None` for any.
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: u32,
}

impl Rule {
    /// Whether the rule decides a request (see the module docs for the semantics).
    pub fn matches(&self, dev_type: u32, major: u32, minor: u32, access: u32) -> bool {
        self.dev_type.is_none_or(|t| t == dev_type)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && if self.allow { access & self.access == access } else { access & self.access != 0 }
    }

    fn matches_everything(&self) -> bool {
        self.dev_type.is_none() && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }
}

fn number(field: &'static str, v: Option<i64>) -> Result<Option<u32>> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| Error::InvalidResource {
            field,
            reason: format!("{n} is not a device number (0..2^32, or -1 for any)"),
        }),
    }
}

/// Converts OCI rules; FIFO rules are dropped because the device cgroup never sees FIFOs.
pub fn rules_from_oci(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let dev_type = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::P => continue,
        };
        let access = match r.access().as_deref() {
            None | Some("") => ACC_ALL,
            Some(s) => s.chars().try_fold(0, |acc, c| match c {
                'r' => Ok(acc | ACC_READ),
                'w' => Ok(acc | ACC_WRITE),
                'm' => Ok(acc | ACC_MKNOD),
                _ => Err(Error::InvalidResource {
                    field: "devices.access",
                    reason: format!("{s:?} may hold only the letters r, w and m"),
                }),
            })?,
        };
        out.push(Rule {
            allow: r.allow(),
            dev_type,
            major: number("devices.major", r.major())?,
            minor: number("devices.minor", r.minor())?,
            access,
        });
    }
    Ok(out)
}

/// Compiles rules into the program's instructions.
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(ALU32_AND_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R3, R1, 0, 0),
        insn(ALU32_RSH_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ];
    let mut default_verdict = 0;
    // The last matching rule wins, so the program tests rules from last to first and returns on
    // the first match. A rule matching everything ends the search: earlier rules are dead.
    for rule in rules.iter().rev() {
        if rule.matches_everything() {
            default_verdict = i32::from(rule.allow);
            break;
        }
        let start = p.len();
        let mut jumps = Vec::new();
        if let Some(t) = rule.dev_type {
            jumps.push(p.len());
            p.push(insn(JMP32_JNE_K, R2, 0, 0, t as i32));
        }
        if rule.access != ACC_ALL || !rule.allow {
            p.push(insn(ALU32_MOV_X, R1, R3, 0, 0));
            p.push(insn(ALU32_AND_K, R1, 0, 0, rule.access as i32));
            jumps.push(p.len());
            if rule.allow {
                // Skip unless every requested bit is granted.
                p.push(insn(JMP32_JNE_X, R1, R3, 0, 0));
            } else {
                // Skip unless some requested bit is denied.
                p.push(insn(JMP32_JEQ_K, R1, 0, 0, 0));
            }
        }
        if let Some(m) = rule.major {
            jumps.push(p.len());
            p.push(insn(JMP32_JNE_K, R4, 0, 0, m as i32));
        }
        if let Some(m) = rule.minor {
            jumps.push(p.len());
            p.push(insn(JMP32_JNE_K, R5, 0, 0, m as i32));
        }
        p.push(insn(ALU32_MOV_K, R0, 0, 0, i32::from(rule.allow)));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let end = p.len();
        debug_assert!(end - start < i16::MAX as usize);
        for j in jumps {
            p[j].off = (end - j - 1) as i16;
        }
    }
    p.push(insn(ALU32_MOV_K, R0, 0, 0, default_verdict));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Runs a compiled program on one request: a tiny interpreter of exactly the opcodes
    /// `compile` emits, so the generated code is checked without a kernel.
    pub(crate) fn run(prog: &[Insn], dev_type: u32, major: u32, minor: u32, access: u32) -> u32 {
        let ctx = [(access << 16) | dev_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = (*pc as isize + i.off as isize) as usize;
                }
            };
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                ALU32_MOV_K => r[dst] = u64::from(i.imm as u32),
                ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
                JMP32_JNE_K => jump(r[dst] as u32 != i.imm as u32, &mut pc),
                JMP32_JEQ_K => jump(r[dst] as u32 == i.imm as u32, &mut pc),
                JMP32_JNE_X => jump(r[dst] as u32 != r[src] as u32, &mut pc),
                JMP_EXIT => return r[0] as u32,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// The reference semantics: the last matching rule decides, default deny.
    fn reference(rules: &[Rule], t: u32, ma: u32, mi: u32, acc: u32) -> u32 {
        rules.iter().rev().find(|r| r.matches(t, ma, mi, acc)).map_or(0, |r| u32::from(r.allow))
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (
            any::<bool>(),
            prop_oneof![Just(None), Just(Some(DEV_BLOCK)), Just(Some(DEV_CHAR))],
            proptest::option::of(0u32..4),
            proptest::option::of(prop_oneof![0u32..4, Just(u32::MAX)]),
            1u32..=7,
        )
            .prop_map(|(allow, dev_type, major, minor, access)| Rule { allow, dev_type, major, minor, access })
    }

    fn oci(json: &str) -> Vec<Rule> {
        let v: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        rules_from_oci(&v).unwrap()
    }

    #[test]
    fn deny_null_allow_rest() {
        let rules =
            oci(r#"[{"allow":true,"access":"rwm"},{"allow":false,"type":"c","major":1,"minor":3,"access":"rwm"}]"#);
        let p = compile(&rules);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, ACC_READ), 0);
        assert_eq!(run(&p, DEV_CHAR, 1, 5, ACC_READ | ACC_WRITE), 1);
        assert_eq!(run(&p, DEV_BLOCK, 1, 3, ACC_READ), 1);
    }

    #[test]
    fn default_is_deny_and_partial_deny_refuses_read_write() {
        let rules =
            oci(r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":5,"access":"rw"}]"#);
        let p = compile(&rules);
        assert_eq!(run(&p, DEV_CHAR, 1, 5, ACC_READ), 1);
        assert_eq!(run(&p, DEV_CHAR, 1, 5, ACC_MKNOD), 0);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, ACC_READ), 0);
        let p = compile(&oci(r#"[{"allow":true},{"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]"#));
        assert_eq!(run(&p, DEV_CHAR, 1, 3, ACC_READ), 1);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE), 0);
        assert_eq!(run(&compile(&[]), DEV_CHAR, 1, 3, ACC_READ), 0);
    }

    #[test]
    fn oci_conversion_refuses_bad_values_and_drops_fifos() {
        let bad = [
            r#"[{"allow":true,"access":"rx"}]"#,
            r#"[{"allow":true,"major":-2}]"#,
            r#"[{"allow":true,"minor":4294967296}]"#,
        ];
        for b in bad {
            let v: Vec<LinuxDeviceCgroup> = serde_json::from_str(b).unwrap();
            assert!(rules_from_oci(&v).is_err(), "{b}");
        }
        assert!(oci(r#"[{"allow":true,"type":"p"}]"#).is_empty());
        assert_eq!(oci(r#"[{"allow":true,"type":"u","major":-1}]"#)[0].dev_type, Some(DEV_CHAR));
    }

    proptest! {
        #[test]
        fn program_agrees_with_reference(
            rules in proptest::collection::vec(rule(), 0..12),
            t in prop_oneof![Just(DEV_BLOCK), Just(DEV_CHAR)],
            ma in 0u32..5,
            mi in prop_oneof![0u32..5, Just(u32::MAX)],
            acc in 1u32..=7,
        ) {
            let prog = compile(&rules);
            prop_assert_eq!(run(&prog, t, ma, mi, acc), reference(&rules, t, ma, mi, acc));
        }
    }
}
