//! Many strata commands at once, as a busy node issues them: parallel lifecycles in one state
//! root, the same id created twice at the same moment, imports and `gc` racing container starts.
//! Each test checks what is left afterwards: state directories, cgroups, mounts, processes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn fifty_parallel_lifecycles_in_one_state_root_leave_nothing() {
    require_root();
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("state");
    // A marker no other process on the machine has in its command line.
    let marker = format!("4242{}", std::process::id());
    let containers: Vec<TestContainer> = (0..50)
        .map(|i| {
            let mut c = TestContainer::new("par", &format!("echo ready; exec sleep {marker}{i:02}"));
            c.root = root.clone();
            c
        })
        .collect();
    let listing_done = std::sync::atomic::AtomicBool::new(false);
    let lists = std::thread::scope(|s| {
        // `list` and `state` while containers come and go must never see a half-written state.
        let lister = s.spawn(|| {
            let mut n = 0;
            while !listing_done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new(strata_bin())
                    .arg("--root")
                    .arg(&root)
                    .args(["list", "--format", "json"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "list during the lifecycles: {}", describe(&out));
                let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
                assert!(listed.is_array() || listed.is_null(), "list printed {}", describe(&out));
                n += 1;
            }
            n
        });
        let workers: Vec<_> = containers
            .iter()
            .map(|c| {
                s.spawn(move || {
                    c.create();
                    let pid = c.state()["pid"].as_i64().unwrap() as i32;
                    c.ok(&["start", &c.id]);
                    assert_eq!(c.ok(&["exec", &c.id, "sh", "-c", "echo $((6*7))"]).trim(), "42");
                    assert_eq!(c.state()["status"], "running");
                    c.ok(&["kill", &c.id, "KILL"]);
                    for _ in 0..500 {
                        if c.state()["status"] == "stopped" {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    assert_eq!(c.state()["status"], "stopped", "{} did not stop", c.id);
                    c.ok(&["delete", &c.id]);
                    c.assert_gone(Some(pid));
                })
            })
            .collect();
        let failures: Vec<String> = workers
            .into_iter()
            .filter_map(|w| w.join().err())
            .map(|e| e.downcast_ref::<String>().cloned().unwrap_or_else(|| format!("{e:?}")))
            .collect();
        listing_done.store(true, std::sync::atomic::Ordering::SeqCst);
        let lists = lister.join().unwrap();
        assert!(failures.is_empty(), "{} of 50 lifecycles failed:\n{}", failures.len(), failures.join("\n"));
        lists
    });
    assert!(lists > 0);
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "state left in the shared root: {left:?}");
    assert!(processes_with(&marker).is_empty(), "container processes left");
    let out = Command::new(strata_bin()).arg("--root").arg(&root).args(["list", "-q"]).output().unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{}", describe(&out));
    for c in &containers {
        assert!(mounts_under(&c.dir).is_empty(), "mounts left under {}", c.dir.display());
    }
}

#[test]
fn the_same_id_created_twice_at_once_has_exactly_one_winner() {
    require_root();
    for round in 0..10 {
        let c = TestContainer::new("twice", "exec sleep 1000");
        c.write_config();
        // Each create's error goes to a file: the container inherits stdio, and a pipe would
        // stay open as long as the winner's init lives.
        let spawn = |n: u32| {
            let err = std::fs::File::create(c.dir.join(format!("create-{n}.stderr"))).unwrap();
            c.strata(&["create", &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().unwrap()
        };
        let (mut a, mut b) = (spawn(0), spawn(1));
        let statuses = [a.wait().unwrap(), b.wait().unwrap()];
        let errors: Vec<String> =
            (0..2).map(|n| std::fs::read_to_string(c.dir.join(format!("create-{n}.stderr"))).unwrap()).collect();
        let winners = statuses.iter().filter(|s| s.success()).count();
        assert_eq!(winners, 1, "round {round}: {winners} creates of one id succeeded: {errors:?}");
        let err = &errors[statuses.iter().position(|s| !s.success()).unwrap()];
        assert!(err.contains(&c.id) && err.contains("exists"), "round {round}: the loser's error: {err}");
        // The loser took nothing of the winner's with it.
        let state = c.state();
        assert_eq!(state["status"], "created", "round {round}");
        let pid = state["pid"].as_i64().unwrap() as i32;
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "round {round}: the winner's init is gone");
        assert!(c.cgroup_dir().exists(), "round {round}: the winner's cgroup is gone");
        c.ok(&["start", &c.id]);
        c.ok(&["delete", "--force", &c.id]);
        c.assert_gone(Some(pid));
    }
}

#[test]
fn imports_and_gc_race_container_starts_and_lose_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (state, store, layout) = (tmp.path().join("state"), tmp.path().join("store"), tmp.path().join("layout"));
    busybox_layout(&layout);
    let strata = |args: &[&str]| {
        Command::new(strata_bin())
            .arg("--root")
            .arg(&state)
            .arg(args[0])
            .arg("--store")
            .arg(&store)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Two imports of one image at once: both succeed, one image, one copy of each blob.
    let layout_arg = layout.to_str().unwrap();
    let outs = std::thread::scope(|s| {
        let a = s.spawn(|| strata(&["image", "import", layout_arg]));
        let b = s.spawn(|| strata(&["image", "import", layout_arg]));
        [a.join().unwrap(), b.join().unwrap()]
    });
    for out in &outs {
        assert!(out.status.success(), "concurrent import: {}", describe(out));
    }
    assert_eq!(String::from_utf8_lossy(&strata(&["image", "ls", "-q"]).stdout), "bb\n");

    // Containers start and exit through `run IMAGE` while `gc` runs over and over.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (gcs, failures) = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = strata(&["gc"]);
                assert!(out.status.success(), "gc while containers start: {}", describe(&out));
                n += 1;
            }
            n
        });
        let runners: Vec<_> = (0..4)
            .map(|t| {
                let strata = &strata;
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for i in 0..6 {
                        let name = format!("gcrace-{t}-{i}");
                        let out = strata(&[
                            "run",
                            "--rm",
                            "--name",
                            &name,
                            "bb",
                            "sh",
                            "-c",
                            "cat /bin/busybox >/dev/null && echo ok",
                        ]);
                        if !out.status.success() || out.stdout != b"ok\n" {
                            failed.push(format!("{name}: {}", describe(&out)));
                        }
                    }
                    failed
                })
            })
            .collect();
        let failures: Vec<String> = runners.into_iter().flat_map(|r| r.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (gc.join().unwrap(), failures)
    });
    assert!(failures.is_empty(), "{} runs failed while gc ran {gcs} times:\n{}", failures.len(), failures.join("\n"));
    assert!(gcs > 0);
    assert_eq!(
        std::fs::read_dir(store.join("containers")).unwrap().count(),
        0,
        "a container's root file system was left"
    );
    assert!(mounts_under(&store).is_empty(), "mounts left in the store: {:?}", mounts_under(&store));
    let fsck = strata(&["fsck"]);
    assert!(
        fsck.status.success() && String::from_utf8_lossy(&fsck.stdout).contains("0 problems"),
        "{}",
        describe(&fsck)
    );
    // The image is whole: one more run works.
    let out = strata(&["run", "--rm", "bb", "sh", "-c", "echo ok"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", describe(&out));
}
