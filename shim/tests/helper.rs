//! The shim daemon's helper as the daemon runs it ([`engine::shimv2::runner::Runner`]): from a
//! read-only view of the `strata` binary, so that it is protected from the container from its
//! first instruction and needs no re-execution of its own. Seen from a hook the helper runs:
//! its parent's executable cannot be opened for writing, and the helper never re-executed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use engine::shimv2::helper::HelperRequest;
use engine::shimv2::runner::{HELPER_TIMEOUT, Runner};
use std::os::fd::OwnedFd;

fn null3() -> [OwnedFd; 3] {
    let f = || OwnedFd::from(std::fs::File::options().read(true).write(true).open("/dev/null").unwrap());
    [f(), f(), f()]
}

#[test]
fn the_daemon_runs_its_helper_protected_without_a_re_execution() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seen");
    // The hook is the helper's child: what it sees of its parent is the helper.
    let script = format!(
        "exec >{out}; readlink /proc/$PPID/exe; \
         if (exec 3>>/proc/$PPID/exe) 2>/dev/null; then echo writable; else echo protected; fi; \
         if tr '\\0' '\\n' </proc/$PPID/environ | grep -q '^_STRATA_REEXEC='; then echo re-executed; else echo first-exec; fi",
        out = out.display()
    );
    let hooks = serde_json::json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]});
    let req = HelperRequest::Hooks { kind: "poststart".into(), hooks: hooks.to_string(), state: "{}".into() };
    let mut runner: Runner<()> = Runner::new(strata_bin().into(), tmp.path().to_path_buf(), HELPER_TIMEOUT);
    for round in 0..2 {
        let pid = runner.start(&req, null3(), ()).unwrap();
        let (_, code) = engine::signals::reap(pid, 0).unwrap();
        let ((), result) = runner.on_exit(pid, code).unwrap();
        assert_eq!(result.unwrap(), 0, "round {round}");
        let seen = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = seen.lines().collect();
        assert_eq!(lines.len(), 3, "round {round}: {seen}");
        assert_eq!(&lines[1..], ["protected", "first-exec"], "round {round}: {seen}");
    }
}
