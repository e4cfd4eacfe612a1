//! Generated syscall-name tables, one module per architecture (see `seccomp/tables/generate.py`).

pub(crate) mod aarch64;
pub(crate) mod arm;
pub(crate) mod x32;
pub(crate) mod x86;
pub(crate) mod x86_64;
