//! The crate's error type.

/// Everything that can go wrong while compiling or installing a profile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile uses something this compiler does not implement.
    #[error("seccomp: {0} is not supported")]
    Unsupported(String),
    /// An argument condition names an argument other than 0 to 5.
    #[error("seccomp: syscalls[{rule}].args[{arg}].index is {index}, but syscalls have only 6 arguments (0 to 5)")]
    ArgIndex {
        /// Position of the rule in `syscalls`.
        rule: usize,
        /// Position of the condition in the rule's `args`.
        arg: usize,
        /// The offending index.
        index: usize,
    },
    /// `valueTwo` is set on an operator that takes a single value.
    #[error(
        "seccomp: syscalls[{rule}].args[{arg}].valueTwo is only meaningful with SCMP_CMP_MASKED_EQ; remove it or change the operator"
    )]
    ValueTwo {
        /// Position of the rule in `syscalls`.
        rule: usize,
        /// Position of the condition in the rule's `args`.
        arg: usize,
    },
    /// An errno or trace value does not fit in the 16 data bits of a seccomp return value.
    #[error("seccomp: {field} is {value}, but it must be at most 65535")]
    ReturnData {
        /// The JSON path of the field, e.g. `syscalls[3].errnoRet`.
        field: String,
        /// The value found.
        value: u32,
    },
    /// An errno at or above the kernel's `MAX_ERRNO` (4095), which libseccomp, runc and crun refuse.
    #[error("seccomp: {field} is {value}, but an errno must be at most 4094 (runc refuses larger ones too)")]
    ErrnoRange {
        /// The JSON path of the field, e.g. `syscalls[3].errnoRet`.
        field: String,
        /// The value found.
        value: u32,
    },
    /// `SCMP_ACT_NOTIFY` cannot be the default action (the agent would have to answer every syscall).
    #[error("seccomp: defaultAction SCMP_ACT_NOTIFY is not allowed; use it only on syscall rules")]
    NotifyDefault,
    /// The generated program is longer than the kernel accepts.
    #[error("seccomp: the compiled filter has {len} instructions, more than the kernel's limit of {max}")]
    TooLong {
        /// Instructions generated.
        len: usize,
        /// The kernel's limit (BPF_MAXINSNS).
        max: usize,
    },
    /// The generated program broke a rule of the kernel's verifier (a bug in this crate).
    #[error("seccomp: internal error, the compiled program is invalid: {0}")]
    InvalidProgram(String),
    /// The kernel refused the program.
    #[error("seccomp: installing the filter failed: {0}")]
    Install(std::io::Error),
}
