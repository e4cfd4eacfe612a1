//! OCI seccomp profiles compiled to classic BPF and installed with `seccomp(2)`.
//!
//! The engine calls [`compile`] while it still reads the bundle (so a bad profile fails `create`
//! before anything exists) and [`Filter::install`] as the last step before `execve`.
//!
//! * [`compile`] resolves syscall names with tables generated from the kernel headers
//!   (`tables/generate.py`), merges rules as libseccomp does and emits a binary search over
//!   syscall numbers (see the `compile` module docs);
//! * [`Filter::install`] loads the program with `seccomp(2)`, never touching `no_new_privs`;
//! * [`default_profile`] is a Docker-compatible default profile;
//! * [`verify`] applies the kernel verifier's rules to any program (used by tests and fuzzing).

use std::fmt;
use std::os::fd::OwnedFd;

use oci_spec::runtime::LinuxSeccomp;

mod arch;
mod bpf;
mod compile;
mod default_profile;
mod error;
mod install;
mod tables;

pub use arch::Arch;
pub use bpf::{MAX_INSNS, verify};
pub use compile::BAD_ARCH_ACTION;
pub use default_profile::default_profile;
pub use error::Error;

/// A compiled seccomp program, ready to install.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
    uses_notify: bool,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .field("uses_notify", &self.uses_notify)
            .finish()
    }
}

/// Compiles an OCI seccomp profile for the native architecture and those it lists.
///
/// Unknown syscall names are skipped with a warning (as runc does); they never widen what is
/// allowed. Anything else the compiler cannot honour is an [`Error`] naming the field.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, Error> {
    let plan = compile::plan(profile)?;
    let program = compile::generate(&plan)?;
    Ok(Filter { program, flags: plan.flags, uses_notify: plan.uses_notify })
}

impl Filter {
    /// Installs the filter on the calling thread; returns the listener fd for `SCMP_ACT_NOTIFY`.
    ///
    /// Does not set `no_new_privs`: the caller must have set it or hold `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<Option<OwnedFd>, Error> {
        install::install(&self.program, self.flags, self.uses_notify)
    }

    /// The BPF program.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// Whether some rule uses `SCMP_ACT_NOTIFY`, so [`Filter::install`] returns a listener fd.
    pub fn uses_notify(&self) -> bool {
        self.uses_notify
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits the profile asked for.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test profile parses")
    }

    #[test]
    fn errors_name_the_field() {
        let bad_index = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#;
        let err = compile(&profile(bad_index)).expect_err("index 6 is refused");
        assert!(err.to_string().contains("syscalls[0].args[0].index"), "{err}");

        let value_two = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"valueTwo":2,"op":"SCMP_CMP_EQ"}]}]}"#;
        let err = compile(&profile(value_two)).expect_err("valueTwo on EQ is refused");
        assert!(err.to_string().contains("valueTwo"), "{err}");

        let errno = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#;
        let err = compile(&profile(errno)).expect_err("errno too large");
        assert!(err.to_string().contains("defaultErrnoRet"), "{err}");

        // libseccomp (so runc and crun) refuses an errno of MAX_ERRNO or more; a trace value may be
        let max_errno = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","errnoRet":4095}]}"#;
        let err = compile(&profile(max_errno)).expect_err("errno 4095 is refused");
        assert!(matches!(&err, Error::ErrnoRange { field, value: 4095 } if field == "syscalls[0].errnoRet"), "{err}");
        let largest = max_errno.replace("4095", "4094");
        compile(&profile(&largest)).expect("errno 4094 compiles");
        let trace = max_errno.replace("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE").replace("4095", "65535");
        compile(&profile(&trace)).expect("trace data 65535 compiles");

        let notify = r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#;
        assert!(matches!(compile(&profile(notify)), Err(Error::NotifyDefault)));
    }

    #[test]
    fn unknown_names_never_allow() {
        let p = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["no_such_call"],
            "action":"SCMP_ACT_ALLOW"}]}"#;
        let with_unknown = compile(&profile(p)).expect("compiles");
        let empty = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#)).expect("compiles");
        assert_eq!(with_unknown.instructions().len(), empty.instructions().len());
        assert!(!with_unknown.instructions().iter().any(|i| i.k == libc::SECCOMP_RET_ALLOW));
    }

    #[test]
    fn flags_and_notify_are_recorded() {
        let p = r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW","SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_NOTIFY"}]}"#;
        let filter = compile(&profile(p)).expect("compiles");
        assert!(filter.uses_notify());
        assert_eq!(
            filter.flags(),
            libc::SECCOMP_FILTER_FLAG_LOG
                | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        );
    }

    #[test]
    fn default_profile_is_a_binary_search() {
        let filter = compile(&default_profile(&[])).expect("default profile compiles");
        // arch check + nr load + tree depth: far below libseccomp's linear chain
        assert!(filter.instructions().len() < 1500, "{}", filter.instructions().len());
    }
}
