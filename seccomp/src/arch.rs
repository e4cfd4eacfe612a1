//! The architectures a filter can cover, their `seccomp_data.arch` tokens and syscall tables.
//!
//! x86_64 and x32 share the audit token `AUDIT_ARCH_X86_64`; the kernel tells them apart by
//! `__X32_SYSCALL_BIT` in the syscall number, so the compiler splits that token's number space
//! at the bit, as libseccomp does.

use crate::tables;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// `AUDIT_ARCH_ARM` (little-endian 32-bit Arm, the compat ABI of aarch64 kernels).
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// The bit that marks an x32 syscall number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture this crate has a syscall table for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// 64-bit x86.
    X86_64,
    /// 32-bit x86 (i386), the compat ABI of x86_64 kernels.
    X86,
    /// The x32 ABI of x86_64 kernels.
    X32,
    /// 64-bit Arm.
    Aarch64,
    /// 32-bit Arm (EABI), the compat ABI of aarch64 kernels.
    Arm,
}

impl Arch {
    /// The architecture this crate was built for, which every filter covers.
    #[cfg(target_arch = "x86_64")]
    pub const NATIVE: Arch = Arch::X86_64;
    /// The architecture this crate was built for, which every filter covers.
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: Arch = Arch::Aarch64;

    /// Maps an OCI architecture; `None` for one without a table here.
    pub fn from_oci(arch: oci_spec::runtime::Arch) -> Option<Arch> {
        use oci_spec::runtime::Arch as Oci;
        match arch {
            Oci::ScmpArchNative => Some(Arch::NATIVE),
            Oci::ScmpArchX86_64 => Some(Arch::X86_64),
            Oci::ScmpArchX86 => Some(Arch::X86),
            Oci::ScmpArchX32 => Some(Arch::X32),
            Oci::ScmpArchAarch64 => Some(Arch::Aarch64),
            Oci::ScmpArchArm => Some(Arch::Arm),
            _ => None,
        }
    }

    /// The value of `seccomp_data.arch` for syscalls of this architecture.
    pub fn audit_token(self) -> u32 {
        match self {
            Arch::X86_64 | Arch::X32 => AUDIT_ARCH_X86_64,
            Arch::X86 => AUDIT_ARCH_I386,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
            Arch::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// Whether syscall arguments are 32 bits wide, so only their low halves are compared (as
    /// libseccomp does for x86, x32 and 32-bit Arm).
    pub fn has_32bit_args(self) -> bool {
        matches!(self, Arch::X86 | Arch::X32 | Arch::Arm)
    }

    /// The half-open range of syscall numbers this architecture owns within its audit token.
    pub fn number_range(self) -> (u64, u64) {
        match self {
            Arch::X86_64 => (0, u64::from(X32_SYSCALL_BIT)),
            Arch::X32 => (u64::from(X32_SYSCALL_BIT), 1 << 32),
            Arch::X86 | Arch::Aarch64 | Arch::Arm => (0, 1 << 32),
        }
    }

    /// The syscall number of `name` on this architecture.
    pub fn syscall_number(self, name: &str) -> Option<u32> {
        let table = self.table();
        table.binary_search_by(|(n, _)| (*n).cmp(name)).ok().map(|i| table[i].1)
    }

    /// Every `(name, number)` of this architecture, sorted by name.
    pub fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Arch::X86_64 => tables::x86_64::SYSCALLS,
            Arch::X86 => tables::x86::SYSCALLS,
            Arch::X32 => tables::x32::SYSCALLS,
            Arch::Aarch64 => tables::aarch64::SYSCALLS,
            Arch::Arm => tables::arm::SYSCALLS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        for arch in [Arch::X86_64, Arch::X86, Arch::X32, Arch::Aarch64, Arch::Arm] {
            let table = arch.table();
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0), "{arch:?}");
            let (lo, hi) = arch.number_range();
            assert!(table.iter().all(|(_, nr)| (lo..hi).contains(&u64::from(*nr))), "{arch:?}");
        }
    }

    #[test]
    fn well_known_numbers() {
        assert_eq!(Arch::X86_64.syscall_number("getppid"), Some(110));
        assert_eq!(Arch::X86.syscall_number("socketcall"), Some(102));
        assert_eq!(Arch::X32.syscall_number("read"), Some(X32_SYSCALL_BIT));
        assert_eq!(Arch::Aarch64.syscall_number("openat"), Some(56));
        assert_eq!(Arch::Aarch64.syscall_number("open"), None);
        assert_eq!(Arch::Arm.syscall_number("open"), Some(5));
        assert_eq!(Arch::Arm.syscall_number("getppid"), Some(64));
        // Docker's Arm-only names, and the Arm-private calls at 0xf0000 + n
        assert_eq!(Arch::Arm.syscall_number("arm_fadvise64_64"), Some(270));
        assert_eq!(Arch::Arm.syscall_number("sync_file_range2"), Some(341));
        assert_eq!(Arch::Arm.syscall_number("breakpoint"), Some(0xf_0001));
        assert_eq!(Arch::Arm.syscall_number("set_tls"), Some(0xf_0005));
        assert_eq!(Arch::X86_64.syscall_number("no_such_call"), None);
    }
}
