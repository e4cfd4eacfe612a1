//! containerd runs strata through `containerd-shim-strata-v1`: each test starts its own
//! containerd (private root, state, socket; CRI disabled) with the shim first on its PATH,
//! imports a busybox image it builds, and drives it with `ctr`, as a user would.
//!
//! Needs root and Debian's `containerd` package (1.6.20 on bookworm); `$STRATA_CONTAINERD`
//! selects another containerd binary (with its `ctr` beside it).

#![allow(clippy::unwrap_used)]

mod harness;
#[path = "../../../layerstore/tests/registry/mod.rs"]
mod registry;
mod snapshotter;

use harness::{Containerd, shim_bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `ctr events` in the background, keeping this test's namespace's topics in order.
struct Events {
    child: std::process::Child,
    topics: Arc<Mutex<Vec<String>>>,
}

impl Events {
    fn watch(c: &Containerd) -> Events {
        let mut child = c.ctr_cmd_untimed(&["events"]).stdout(Stdio::piped()).spawn().expect("ctr events");
        let out = child.stdout.take().expect("stdout");
        let topics = Arc::new(Mutex::new(Vec::new()));
        let (t, ns) = (topics.clone(), c.namespace().to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // TIMESTAMP(3 fields) NAMESPACE TOPIC EVENT...
                if let Some(i) = f.iter().position(|x| *x == ns)
                    && let Some(topic) = f.get(i + 1)
                    && topic.starts_with("/tasks/")
                {
                    t.lock().unwrap().push(topic.to_string());
                }
            }
        });
        // Let the subscription reach containerd before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Events { child, topics }
    }

    /// Waits until `topic` has been seen, then returns every topic so far.
    fn until(&self, topic: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.topics.lock().unwrap().clone();
            if seen.iter().any(|t| t == topic) || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version_flag_prints_the_runtime() {
    let out = Command::new(shim_bin()).arg("-v").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("io.containerd.strata.v1"));
}

#[test]
fn run_exit_code_stdout_stderr_stdin_and_event_order() {
    let c = Containerd::start();
    let events = Events::watch(&c);
    let out = c.ctr(&c.run_args(&["--rm"], "exits", &["sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    let seen = events.until("/tasks/delete");
    assert_eq!(seen, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "event order");

    let mut child = c.ctr_cmd(&c.run_args(&["--rm"], "stdin", &["sh", "-c", "read x; echo got:$x"]));
    let mut child = child.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"line-in\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:line-in\n");

    // A large input and its end: every byte arrives before the process sees EOF (ctr closes
    // its FIFO and calls CloseIO right after its last write).
    let mut child = c.ctr_cmd(&c.run_args(&["--rm"], "bigin", &["busybox", "wc", "-c"]));
    let mut child = child.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || input.write_all(&vec![b'x'; 300_000]));
    let out = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    assert!(
        out.status.success() && written.is_ok(),
        "{:?} {written:?} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300000");
    assert!(c.task("exits").is_none() && c.task("stdin").is_none() && c.task("bigin").is_none());
    assert!(c.shim_pids().is_empty(), "a shim outlived its task");
}

#[test]
fn run_with_a_terminal() {
    let c = Containerd::start();
    let args = c.run_args(&["--rm", "-t"], "tty", &["sh", "-c", "tty; echo term-ok; exit 4"]);
    let (status, text) = c.ctr_with_terminal(&args);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("term-ok"), "{text}");
    assert_eq!(status.code(), Some(4), "{text}");

    // A background process keeping the terminal open does not hold the exit back (the shim
    // reports it once the output had its time to drain; `--rm` then ends the rest).
    let args = c.run_args(&["--rm", "-t"], "ttybg", &["sh", "-c", "sleep 1000 & echo bg-started; exit 7"]);
    let (status, text) = c.ctr_with_terminal(&args);
    assert!(text.contains("bg-started"), "{text}");
    assert_eq!(status.code(), Some(7), "{text}");

    // An exec with a terminal of its own, in a running container.
    c.ok(&c.run_args(&["-d"], "ttyhost", &["sleep", "1000"]));
    c.wait_status("ttyhost", "RUNNING");
    let (status, text) = c.ctr_with_terminal(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "t1",
        "ttyhost",
        "sh",
        "-c",
        "tty; echo exec-term-ok; exit 6",
    ]);
    assert!(text.contains("/dev/pts/") && text.contains("exec-term-ok"), "{status:?}: {text:?}");
    assert_eq!(status.code(), Some(6), "{text}");
    c.ok(&["task", "kill", "-s", "SIGKILL", "ttyhost"]);
    c.wait_status("ttyhost", "STOPPED");
    c.ok(&["task", "delete", "ttyhost"]);
    c.ok(&["containers", "rm", "ttyhost"]);
}

#[test]
fn exec_pause_resume_metrics_kill_and_delete() {
    let c = Containerd::start();
    let events = Events::watch(&c);
    c.ok(&c.run_args(&["-d"], "long", &["sleep", "1000"]));
    c.wait_status("long", "RUNNING");
    let (pid, _) = c.task("long").unwrap();

    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo from-exec; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");

    // Nothing of the shim or its helper leaks into the container: the init holds its stdio
    // only, and so does an exec'd process (3 is `ls`'s own directory).
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "descriptors of the init");
    let listed = c.ok(&["task", "exec", "--exec-id", "e2", "long", "ls", "/proc/self/fd"]);
    assert_eq!(listed.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2", "3"], "descriptors of an exec");

    c.ok(&["task", "pause", "long"]);
    c.wait_status("long", "PAUSED");
    c.ok(&["task", "resume", "long"]);
    c.wait_status("long", "RUNNING");

    let metrics = c.ok(&["task", "metrics", "long"]);
    assert!(metrics.contains("cpu.usage_usec"), "{metrics}");
    let ps = c.ok(&["task", "ps", "long"]);
    assert!(ps.contains(&pid.to_string()), "{ps}");

    c.ok(&["task", "kill", "-s", "SIGKILL", "long"]);
    c.wait_status("long", "STOPPED");
    c.ok(&["task", "delete", "long"]);
    c.ok(&["containers", "rm", "long"]);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the init survived");
    assert!(!c.state_root().join("long").exists(), "engine state left behind");

    let seen = events.until("/tasks/delete");
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    assert_eq!(seen, want, "event order");
}

#[test]
fn two_containers_run_side_by_side() {
    let c = Containerd::start();
    for id in ["one", "two"] {
        c.ok(&c.run_args(&["-d"], id, &["sleep", "1000"]));
    }
    for id in ["one", "two"] {
        c.wait_status(id, "RUNNING");
        let out = c.ok(&["task", "exec", "--exec-id", "hello", id, "sh", "-c", "echo $HOSTNAME-ok"]);
        assert!(out.ends_with("-ok\n"), "{out}");
    }
    assert_eq!(c.shim_pids().len(), 2, "one shim per container");
    // Each shim listens on a path socket in a directory only root can enter.
    for id in ["one", "two"] {
        let address = std::fs::read_to_string(c.bundle(id).join("address")).unwrap();
        let path =
            address.trim().strip_prefix("unix:///run/containerd/s/").expect("a path socket in /run/containerd/s");
        let md = std::fs::metadata(format!("/run/containerd/s/{path}")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()));
    }
    let dir = std::fs::metadata("/run/containerd/s").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o700), "/run/containerd/s must be root-only");
    for id in ["one", "two"] {
        c.ok(&["task", "kill", "-s", "SIGKILL", id]);
        c.wait_status(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["containers", "rm", id]);
    }
    c.wait_shims_gone("shims did not exit after their tasks were deleted");
}

#[test]
fn killed_shim_is_cleaned_up_by_delete() {
    let c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "orphan", &["sleep", "1000"]));
    c.wait_status("orphan", "RUNNING");
    let (pid, _) = c.task("orphan").unwrap();
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let address = std::fs::read_to_string(c.bundle("orphan").join("address")).unwrap();
    let socket = std::path::PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    // containerd notices, runs `containerd-shim-strata-v1 delete`, and forgets the task.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.task("orphan").is_some() {
        assert!(Instant::now() < deadline, "the task outlived its shim");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the container's init survived the shim's cleanup");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!c.state_root().join("orphan").exists(), "engine state left behind");
    assert!(!socket.exists(), "the dead shim's socket was left behind");
    for line in cgroup.lines().filter(|l| l.starts_with("0::")) {
        let rel = line.trim_start_matches("0::");
        let dir = std::path::Path::new("/sys/fs/cgroup/unified").join(rel.trim_start_matches('/'));
        let pure = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        assert!(!dir.exists() && !pure.exists(), "cgroup {rel} left behind");
    }
    c.ok(&["containers", "rm", "orphan"]);
}

#[test]
fn container_survives_a_containerd_restart() {
    let mut c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "steady", &["sleep", "1000"]));
    c.wait_status("steady", "RUNNING");
    let (pid, _) = c.task("steady").unwrap();
    c.restart();
    // containerd reconnects to the shim through the bundle's address file.
    assert_eq!(c.task("steady"), Some((pid, "RUNNING".to_string())));
    let out = c.ok(&["task", "exec", "--exec-id", "after", "steady", "echo", "still-here"]);
    assert_eq!(out, "still-here\n");
    let events = Events::watch(&c);
    c.ok(&["task", "kill", "-s", "SIGKILL", "steady"]);
    c.wait_status("steady", "STOPPED");
    // The shim reconnected to the new containerd to publish the exit.
    assert!(events.until("/tasks/exit").iter().any(|t| t == "/tasks/exit"), "no exit event after the restart");
    c.ok(&["task", "delete", "steady"]);
    c.ok(&["containers", "rm", "steady"]);
}

#[test]
fn log_uri_file_receives_the_output() {
    let c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let uri = format!("file://{}", log.display());
    let out =
        c.ctr(&c.run_args(&["--rm", "--log-uri", &uri], "logged", &["sh", "-c", "echo to-file; echo err-too >&2"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("to-file\n") && text.contains("err-too\n"), "{text:?}");
}

#[test]
fn binary_log_uri_starts_a_logger_that_gets_both_streams() {
    use std::os::unix::fs::PermissionsExt;
    let c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // containerd's protocol: stdout on fd 3, stderr on fd 4, readiness by closing fd 5 (which
    // the copies must not keep open), the query as `key value` arguments.
    let script = dir.path().join("logger.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             cat <&3 >{d}/stdout 5>&- &\n\
             cat <&4 >{d}/stderr 5>&- &\n\
             echo \"$CONTAINER_ID $CONTAINER_NAMESPACE $*\" >{d}/meta\n\
             exec 5>&-\n\
             wait\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?--mode=test", script.display());
    let out = c.ctr(&c.run_args(&["--rm", "--log-uri", &uri], "binlog", &["sh", "-c", "echo to-out; echo to-err >&2"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    // The copies finish on EOF, a moment after the container is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(read("stdout") == "to-out\n" && read("stderr") == "to-err\n") {
        assert!(Instant::now() < deadline, "stdout {:?}, stderr {:?}", read("stdout"), read("stderr"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read("meta"), format!("binlog {} --mode test\n", c.namespace()));
    // A logger that cannot start fails the run, naming it.
    let missing = format!("binary://{d}/no-such-logger");
    let out = c.ctr(&c.run_args(&["--rm", "--log-uri", &missing], "nolog", &["true"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no-such-logger"), "{err}");
}

#[test]
fn containers_of_one_pod_share_a_shim() {
    let c = Containerd::start();
    let pod = "io.kubernetes.cri.sandbox-id=pod1";
    for id in ["pod1", "sidecar"] {
        c.ok(&c.run_args(&["-d", "--annotation", pod], id, &["sleep", "1000"]));
        c.wait_status(id, "RUNNING");
    }
    assert_eq!(c.shim_pids().len(), 1, "one shim for the pod");
    let out = c.ok(&["task", "exec", "--exec-id", "x", "sidecar", "echo", "in-pod"]);
    assert_eq!(out, "in-pod\n");
    // The shim stays while one of its tasks is left, and goes with the last.
    for id in ["sidecar", "pod1"] {
        c.ok(&["task", "kill", "-s", "SIGKILL", id]);
        c.wait_status(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["containers", "rm", id]);
        if id == "sidecar" {
            assert_eq!(c.shim_pids().len(), 1, "the pod's shim left with a task still running");
            assert_eq!(c.task("pod1").map(|t| t.1), Some("RUNNING".to_string()));
        }
    }
    c.wait_shims_gone("the pod's shim did not exit after its last task");
}

#[test]
fn kill_all_reaches_every_process_and_checkpoint_is_refused() {
    let c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "many", &["sleep", "1000"]));
    c.wait_status("many", "RUNNING");
    // An exec that runs until killed, waited on by its own ctr.
    let exec =
        c.ctr_cmd(&["task", "exec", "--exec-id", "bg", "many", "sleep", "999"]).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.ok(&["task", "ps", "many"]).lines().count() < 3 {
        assert!(Instant::now() < deadline, "the exec did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.ctr(&["task", "checkpoint", "many"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not implemented"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    c.ok(&["task", "kill", "--all", "-s", "SIGKILL", "many"]);
    c.wait_status("many", "STOPPED");
    let exec = exec.wait_with_output().unwrap();
    assert_eq!(exec.status.code(), Some(137), "the exec's exit status");
    c.ok(&["task", "delete", "many"]);
    c.ok(&["containers", "rm", "many"]);
}

/// Real-time signals (which nix's `Signal` cannot name) reach an exec by its id and every
/// process with `--all`, and the deaths they cause are reported with 128 + N.
#[test]
fn real_time_signals_are_sent_and_the_exits_they_cause_reported() {
    let c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "rt", &["sleep", "1000"]));
    c.wait_status("rt", "RUNNING");
    let spawn_exec = |id: &str| {
        c.ctr_cmd(&["task", "exec", "--exec-id", id, "rt", "sleep", "999"]).stdout(Stdio::null()).spawn().unwrap()
    };
    let wait_procs = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.ok(&["task", "ps", "rt"]).lines().count() < n + 1 {
            assert!(Instant::now() < deadline, "the execs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let one = spawn_exec("one");
    wait_procs(2);
    c.ok(&["task", "kill", "--exec-id", "one", "-s", &(rtmin + 2).to_string(), "rt"]);
    let one = one.wait_with_output().unwrap();
    assert_eq!(one.status.code(), Some(128 + rtmin + 2), "an exec killed by SIGRTMIN+2");

    let two = spawn_exec("two");
    wait_procs(2);
    // The init (pid 1 of its namespace, without a handler) ignores it; the exec dies of it.
    c.ok(&["task", "kill", "--all", "-s", &rtmax.to_string(), "rt"]);
    let two = two.wait_with_output().unwrap();
    assert_eq!(two.status.code(), Some(128 + rtmax), "an exec killed by SIGRTMAX through --all");
    c.wait_status("rt", "RUNNING");

    c.ok(&["task", "kill", "-s", "SIGKILL", "rt"]);
    c.wait_status("rt", "STOPPED");
    c.ok(&["task", "delete", "rt"]);
    c.ok(&["containers", "rm", "rt"]);
}

#[test]
fn cri_style_runtime_options_are_read_or_refused_by_name() {
    // For a runtime that is not runc, containerd sends runtimeoptions.v1.Options (a config
    // path), as CRI does: strata reads its TOML, and refuses what it cannot take.
    let c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, format!("# strata's shim options\nRoot = \"{}\"\n", state.display())).unwrap();
    let out = c.ok(&c.run_args(
        &["--rm", "--runtime-config-path", config.to_str().unwrap()],
        "opts",
        &["sh", "-c", "echo ran; sleep 0.2"],
    ));
    assert_eq!(out, "ran\n");
    // The state went to the root the options named (the namespace appended).
    assert!(state.join(c.namespace()).is_dir(), "no state root {}", state.display());
    let out = c.ctr(&c.run_args(&["--rm", "--runtime-config-path", "/nonexistent/strata.toml"], "opts2", &["true"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/strata.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&config, "SystemdCgroup = true\n").unwrap();
    let out = c.ctr(&c.run_args(&["--rm", "--runtime-config-path", config.to_str().unwrap()], "opts3", &["true"]));
    assert!(!out.status.success());
    // The systemd driver (taken now) needs a slice:prefix:name path; ctr gives /namespace/id.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("slice:prefix:name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_ttrpc_is_refused_and_the_shim_keeps_serving() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "steady", &["sleep", "1000"]));
    c.wait_status("steady", "RUNNING");
    let address = std::fs::read_to_string(c.bundle("steady").join("address")).unwrap();
    let socket = address.trim().trim_start_matches("unix://").to_string();
    let read_all = |mut s: UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    };
    // A frame header announcing 4 GiB: the connection is closed, nothing is answered.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0]).unwrap();
    assert_eq!(read_all(s).unwrap(), Vec::<u8>::new(), "an oversize frame got an answer");
    // A request whose body is not a ttrpc request: answered with an error status, not a crash.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&[0, 0, 0, 3, 0, 0, 0, 1, 1, 0, 0xff, 0xff, 0xff]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_all(s).unwrap();
    assert!(answer.len() > 10 && answer[4..8] == [0, 0, 0, 1] && answer[8] == 2, "no error response: {answer:?}");
    // The shim still serves containerd.
    c.wait_status("steady", "RUNNING");
    c.ok(&["task", "kill", "-s", "SIGKILL", "steady"]);
    c.wait_status("steady", "STOPPED");
    c.ok(&["task", "delete", "steady"]);
    c.ok(&["containers", "rm", "steady"]);
}

#[test]
fn start_without_strata_beside_fails_clearly_and_spawns_nothing() {
    // The shim alone in a directory, with a PATH that has no `strata`: `start` refuses in one
    // line naming what is missing, before any daemon or socket exists.
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("containerd-shim-strata-v1");
    std::fs::copy(shim_bin(), &shim).unwrap();
    let socket = containerd_shim::socket_address("/nonexistent.sock", "strata-test-nohelper", "lonely");
    let out = Command::new(&shim)
        .args(["-namespace", "strata-test-nohelper", "-id", "lonely", "-address", "/nonexistent.sock", "start"])
        .current_dir(dir.path())
        .env("PATH", "/usr/bin:/bin")
        .env("TTRPC_ADDRESS", "/nonexistent.sock.ttrpc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`strata` binary"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty(), "an address was printed");
    let socket = std::path::PathBuf::from(socket.trim_start_matches("unix://"));
    assert!(!socket.exists(), "{} was created", socket.display());
}

#[test]
fn a_writer_that_is_not_pid_1_survives_a_containerd_restart() {
    // PID 1 ignores SIGPIPE; its child does not. `ctr run -d` leaves no reader on the output
    // FIFO and the restart takes containerd's away: the shim's own read end keeps the writer
    // from EPIPE, so the child goes on writing.
    let mut c = Containerd::start();
    let script = "(while :; do echo tick; sleep 0.05; done) & child=$!; echo $child > /tmp/child; wait $child; echo child-died-$? > /tmp/child-died; sleep 1000";
    c.ok(&c.run_args(&["-d"], "writer", &["sh", "-c", script]));
    c.wait_status("writer", "RUNNING");
    std::thread::sleep(Duration::from_millis(300));
    c.restart();
    std::thread::sleep(Duration::from_millis(500));
    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "probe",
        "writer",
        "sh",
        "-c",
        "cat /tmp/child-died 2>/dev/null || echo alive",
    ]);
    assert_eq!(out.trim(), "alive", "the background writer died after the restart");
    c.ok(&["task", "kill", "-s", "SIGKILL", "writer"]);
    c.wait_status("writer", "STOPPED");
    c.ok(&["task", "delete", "writer"]);
    c.ok(&["containers", "rm", "writer"]);
}

#[test]
fn a_slow_create_does_not_stall_the_pods_other_containers() {
    // Two containers of one pod share a shim. While one is created slowly (a createRuntime
    // hook that takes seconds), an exec in the other — what a Kubernetes probe is — completes.
    let c = Containerd::start();
    let pod = "io.kubernetes.cri.sandbox-id=slowpod";
    c.ok(&c.run_args(&["-d", "--annotation", pod], "slowpod", &["sleep", "1000"]));
    c.wait_status("slowpod", "RUNNING");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hook-done");
    let spec_file = sleep_config(
        &c,
        dir.path(),
        &format!("sleep 4; touch {}", marker.display()),
        &format!("{}/slow", c.namespace()),
        Some(serde_json::json!({"io.kubernetes.cri.sandbox-id": "slowpod"})),
    );
    let mut slow = c
        .ctr_cmd(&["run", "--runtime", harness::RUNTIME, "-d", "--config", spec_file.to_str().unwrap(), "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The slow create is under way (its hook runs) ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.ok(&["containers", "ls", "-q"]).lines().all(|l| l != "slow") {
        if let Ok(Some(st)) = slow.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(slow.stderr.as_mut().unwrap(), &mut err);
            panic!("ctr run --config exited ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "the slow container was never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // ... and a probe in the pod's other container is answered before it ends.
    let out = c.ok(&["task", "exec", "--exec-id", "probe", "slowpod", "echo", "probed"]);
    assert_eq!(out, "probed\n");
    assert!(!marker.exists(), "the probe waited for the slow create");
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(marker.exists());
    c.wait_status("slow", "RUNNING");
    assert_eq!(c.task("slowpod").map(|t| t.1).as_deref(), Some("RUNNING"));
    for id in ["slow", "slowpod"] {
        c.ok(&["task", "kill", "-s", "SIGKILL", id]);
        c.wait_status(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["containers", "rm", id]);
    }
}

/// A config for `ctr run --config` (which then takes no image): `sleep 1000` over a busybox root
/// in `dir`, a createRuntime hook running `sh -c HOOK`, no CPU resources (this host's cgroup2
/// has no cpu controller), the cgroup at `/CGROUP`, `annotations` if given. Written to
/// `dir/spec.json`, whose path it returns.
fn sleep_config(
    c: &Containerd,
    dir: &std::path::Path,
    hook: &str,
    cgroup: &str,
    annotations: Option<serde_json::Value>,
) -> std::path::PathBuf {
    let mut spec: serde_json::Value = serde_json::from_str(&c.ok(&["oci", "spec"])).unwrap();
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs});
    if let Some(a) = annotations {
        spec["annotations"] = a;
    }
    spec["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]});
    if let Some(r) = spec["linux"]["resources"].as_object_mut() {
        r.remove("cpu");
    }
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{cgroup}"));
    let file = dir.join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    file
}

/// Kills what runs in these cgroups and removes them (deepest first) when a test ends, even
/// when it failed because it found them.
struct CgroupGuard(Vec<std::path::PathBuf>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            if dir.exists() {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(5);
                while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[test]
fn a_create_whose_helper_dies_leaves_no_cgroup_state_or_process() {
    // The helper that creates the container is SIGKILLed part-way (by a createRuntime hook, once
    // the container's cgroup and init exist): the shim removes what it left, finding the cgroup
    // from the bundle's linux.cgroupsPath as create did.
    let c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hook-ran");
    let rel = format!("{}/dies", c.namespace());
    let _cleanup = CgroupGuard(vec![
        std::path::Path::new("/sys/fs/cgroup/unified").join(&rel),
        std::path::Path::new("/sys/fs/cgroup/unified").join(c.namespace()),
    ]);
    let spec_file = sleep_config(&c, dir.path(), &format!("touch {}; kill -9 $PPID", marker.display()), &rel, None);
    let out = c
        .ctr_cmd(&["run", "--runtime", harness::RUNTIME, "-d", "--config", spec_file.to_str().unwrap(), "dies"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "create succeeded although its helper was killed");
    assert!(marker.exists(), "the hook never ran: {}", String::from_utf8_lossy(&out.stderr));
    let cgroup = std::path::Path::new("/sys/fs/cgroup/unified").join(&rel);
    let pure = std::path::Path::new("/sys/fs/cgroup").join(&rel);
    assert!(!cgroup.exists() && !pure.exists(), "cgroup {rel} left behind");
    assert!(!c.state_root().join("dies").exists(), "engine state left behind");
    assert!(c.task("dies").is_none(), "containerd kept a task");
    let _ = c.ctr_cmd(&["containers", "rm", "dies"]).output();
}

#[test]
fn delete_of_a_task_whose_shim_still_lives_dismisses_the_shim() {
    // containerd may give up on a shim that still runs (after a restart it could not reach it
    // in time) and run `delete` for its task: the container goes, and the daemon, told to
    // forget it, exits with its last task instead of lingering without a socket.
    let c = Containerd::start();
    c.ok(&c.run_args(&["-d"], "given-up", &["sleep", "1000"]));
    c.wait_status("given-up", "RUNNING");
    let (pid, _) = c.task("given-up").unwrap();
    assert_eq!(c.shim_pids().len(), 1);
    let bundle = c.bundle("given-up");
    let out = Command::new(shim_bin())
        .args(["-namespace", c.namespace(), "-id", "given-up", "-bundle"])
        .arg(&bundle)
        .arg("delete")
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_shims_gone("the shim lingered after delete took its last task");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    let _ = c.ctr(&["task", "delete", "--force", "given-up"]);
    let _ = c.ctr(&["containers", "rm", "given-up"]);
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{} {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn kill_9_of_the_shim_at_each_call_or_of_its_helper_at_each_step_leaves_nothing() {
    // containerd runs with STRATA_FAULT (see the engine's `fault` module) and so do the shims
    // it starts and their helpers. Whatever step dies, a whole lifecycle is tried (each `ctr`
    // ends, in success or error); then containerd, told the shim is gone or asked to delete,
    // leaves no task, shim, engine state, process, cgroup or mount, and the id runs again.
    let mut c = Containerd::start();
    let mounts = || {
        let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        all.lines().filter_map(|l| l.split(' ').nth(4).map(str::to_string)).collect::<Vec<_>>()
    };
    // Each call of the shim, then each step of the create its helper runs.
    let points = engine::fault::SHIM_CALLS.iter().chain(&engine::fault::CREATE_STEPS);
    for (n, point) in points.enumerate() {
        c.restart_with_env(&[("STRATA_FAULT", point)]);
        let id = format!("fault{n}");
        let marker = format!("73{}{n}", std::process::id());
        let bundle = c.bundle(&id).display().to_string();
        let (mut said, mut failed) = (Vec::new(), false);
        for args in [
            c.run_args(&["-d"], &id, &["sleep", &marker]),
            vec!["task", "ls"],
            vec!["task", "exec", "--exec-id", "probe", &id, "true"],
            vec!["task", "kill", "-s", "SIGKILL", &id],
            vec!["task", "delete", &id],
        ] {
            let out = c.ctr(&args);
            failed |= !out.status.success();
            said.push(format!("{args:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
        // Whatever is left goes the way a user would remove it.
        let _ = c.ctr(&["task", "delete", "-f", &id]);
        let _ = c.ctr(&["containers", "rm", &id]);
        let said = said.join("\n");
        // The fault fired: a step of the lifecycle failed (containerd ignores a failed Shutdown),
        // and a dead helper is named as such.
        assert!(failed || *point == "shim:Shutdown", "{point}: every step succeeded\n{said}");
        if point.starts_with("cli:") {
            assert!(said.contains("the shim helper was killed by signal 9"), "{point}\n{said}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(c.shim_pids().is_empty() && processes_with(&marker).is_empty()) {
            assert!(
                Instant::now() < deadline,
                "{point}: left running: shims {:?}, processes {:?}\n{said}",
                c.shim_pids(),
                processes_with(&marker)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(c.task(&id).is_none(), "{point}: containerd kept the task\n{said}");
        assert!(!c.ok(&["containers", "ls", "-q"]).lines().any(|l| l == id), "{point}: container kept\n{said}");
        assert!(!c.state_root().join(&id).exists(), "{point}: engine state left behind\n{said}");
        // Nor anything else there: a helper in flight when its shim died (an exec's) leaves no
        // report behind, whether it finished before containerd's cleanup or after.
        let in_root = || -> Vec<String> {
            std::fs::read_dir(c.state_root())
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_root().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(in_root().is_empty(), "{point}: left in the engine's state root: {:?}\n{said}", in_root());
        let rel = format!("{}/{id}", c.namespace());
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let cgroup = std::path::Path::new(root).join(&rel);
            assert!(!cgroup.exists(), "{point}: cgroup {} left behind\n{said}", cgroup.display());
        }
        let left: Vec<String> = mounts().into_iter().filter(|m| m.starts_with(&bundle)).collect();
        assert!(left.is_empty(), "{point}: mounts left behind: {left:?}\n{said}");
        // Without the fault the same id runs.
        c.restart_with_env(&[]);
        let out = c.ok(&c.run_args(&["--rm"], &id, &["echo", "again"]));
        assert_eq!(out, "again\n", "{point}");
    }
}

#[test]
fn output_written_across_a_containerd_kill_9_is_all_in_the_log() {
    // The shim, not containerd, copies a task's output to a `file://` log: containerd killed
    // with SIGKILL and restarted while the container writes loses no line and reorders none.
    let mut c = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let uri = format!("file://{}", log.display());
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    let until = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while lines() < n {
            assert!(Instant::now() < deadline, "{what}: {} lines", lines());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // (the init lingers after the stop file appears: its exit kills whatever else runs in its
    // PID namespace, and the exec that makes the file must have exited first, not died with 137)
    let script = "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo line-$i; sleep 0.005; done; sleep 1";
    c.ok(&c.run_args(&["-d", "--log-uri", &uri], "counter", &["sh", "-c", script]));
    until(100, "the counter did not start writing");
    c.kill_9_and_restart();
    let after_restart = lines();
    until(after_restart + 50, "the counter stopped writing after containerd's restart");
    c.ok(&["task", "exec", "--exec-id", "stop", "counter", "sh", "-c", ": >/tmp/stop"]);
    c.wait_status("counter", "STOPPED");
    let text = std::fs::read_to_string(&log).unwrap();
    let got: Vec<&str> = text.lines().collect();
    let want: Vec<String> = (1..=got.len()).map(|i| format!("line-{i}")).collect();
    assert!(got.len() > after_restart + 50, "{} lines", got.len());
    assert_eq!(got, want, "the log lost or reordered lines");
    c.ok(&["task", "delete", "counter"]);
    c.ok(&["containers", "rm", "counter"]);
}
