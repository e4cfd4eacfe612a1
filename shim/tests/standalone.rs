//! The containerd shim on its own: `strata shim run` starts `containerd-shim-strata-v1` for a
//! busybox bundle as containerd does, drives it over ttrpc and prints the events it publishes.
//! Root only (the shim creates real containers).

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestContainer, describe};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The namespace a test's shim runs in: one per container, so that a test can remove the
/// namespace's state directory without racing another test.
fn namespace(c: &TestContainer) -> String {
    format!("strata-standalone-{}", c.id)
}

/// `strata shim run` on the container's bundle, with `extra` arguments.
fn shim_run(c: &TestContainer, extra: &[&str]) -> Output {
    c.write_config();
    Command::new(common::strata_bin())
        .args(["shim", "run", "--namespace", &namespace(c), "--bundle"])
        .arg(&c.dir)
        .arg(&c.id)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The printed events: (topic, fields) in the order they arrived.
fn events(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .map(|l| {
            let (topic, fields) = l.split_once(' ').unwrap_or((l, ""));
            (topic.to_string(), fields.to_string())
        })
        .collect()
}

/// Asserts that no shim daemon, state directory, cgroup or bundle file of the run is left.
fn assert_nothing_left(c: &TestContainer) {
    let ns_dir = Path::new("/run/containerd/strata").join(namespace(c));
    let state = ns_dir.join(&c.id);
    assert!(!state.exists(), "state directory {} left behind", state.display());
    // The shim makes the namespace's directory as containerd's runtimes do; the test's own goes.
    let _ = std::fs::remove_dir(&ns_dir);
    assert!(!c.cgroup_dir().exists(), "cgroup {} left behind", c.cgroup_dir().display());
    for name in ["log", "address"] {
        assert!(!c.dir.join(name).exists(), "bundle file {name} left behind");
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-strata-v1"));
        assert!(
            !(is_shim && args.contains(&c.id.as_bytes())),
            "shim process {} left behind",
            entry.file_name().to_string_lossy()
        );
    }
}

#[test]
fn run_relays_output_and_exit_code_and_prints_events_in_order() {
    let c = TestContainer::new("shimrun", "echo to-stdout; echo to-stderr >&2; exit 3");
    let out = shim_run(&c, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "to-stdout"), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).lines().any(|l| l == "to-stderr"), "{}", describe(&out));
    assert_eq!(stdout.lines().last(), Some("exit status 3"), "{}", describe(&out));
    let events = events(&stdout);
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "{}", describe(&out));
    assert!(events[0].1.contains(&format!("container_id: \"{}\"", c.id)), "{}", describe(&out));
    assert!(events[2].1.contains("exit_status: 3"), "{}", describe(&out));
    assert_nothing_left(&c);
}

#[test]
fn run_with_exec_reports_the_exec_and_kills_the_container() {
    let c = TestContainer::new("shimexec", "echo init-ran; exec sleep 60");
    let out = shim_run(&c, &["--exec", "sh", "-c", "echo from-exec; echo exec-err >&2; exit 5"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "from-exec"), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "init-ran"), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).lines().any(|l| l == "exec-err"), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "exec exit status 5"), "{}", describe(&out));
    let events = events(&stdout);
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{}",
        describe(&out)
    );
    // The exec's exit first, with its status; then the container's, killed by SIGKILL.
    assert!(events[4].1.contains("exit_status: 5") && events[4].1.contains("exec-"), "{}", describe(&out));
    assert!(events[5].1.contains("exit_status: 137"), "{}", describe(&out));
    assert_nothing_left(&c);
}

#[test]
fn a_failing_create_cleans_up_and_fails() {
    let c = TestContainer::new("shimbad", "true");
    let mut c = c;
    c.config["process"]["args"] = serde_json::json!(["/no/such/program"]);
    let out = shim_run(&c, &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Create"), "{}", describe(&out));
    assert_nothing_left(&c);
}

#[test]
fn a_signal_to_strata_is_passed_on_to_the_container() {
    use std::io::BufRead;
    let c = TestContainer::new("shimsig", "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done");
    c.write_config();
    let mut child = Command::new(common::strata_bin())
        .args(["shim", "run", "--namespace", &namespace(&c), "--bundle"])
        .arg(&c.dir)
        .arg(&c.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut seen: Vec<String> = lines.by_ref().take_while(|l| l != "ready").collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    seen.extend(lines);
    let status = child.wait().unwrap();
    let stdout = seen.join("\n");
    assert_eq!(status.code(), Some(9), "{stdout}");
    assert!(stdout.lines().any(|l| l == "got-term"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("exit status 9"), "{stdout}");
    assert_nothing_left(&c);
}

#[test]
fn io_uid_and_gid_own_the_stdio_pipes() {
    // The FIFO strata's driver made for stdout, seen from inside through /proc/self/fd/1.
    let c = TestContainer::new("shimio", "stat -L -c 'owner %u:%g' /proc/self/fd/1");
    let out = shim_run(&c, &["--io-uid", "1234", "--io-gid", "4321"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "owner 1234:4321"), "{}", describe(&out));
    assert_nothing_left(&c);
    // Without the options the FIFO stays root's.
    let out = shim_run(&c, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "owner 0:0"), "{}", describe(&out));
    assert_nothing_left(&c);
}
