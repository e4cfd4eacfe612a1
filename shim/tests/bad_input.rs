//! Bad input: each case exits non-zero with one clear line naming the file and the field, and
//! leaves no state directory, cgroup, mount or process behind.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::process::Stdio;

/// Mount points that mention `needle` (the bundle directory or the test's root).
fn mounts_mentioning(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(needle)).count()
}

/// Creates `c` (with whatever config is on disk), expects failure, returns stderr, and checks
/// that nothing is left.
fn expect_refusal(c: &TestContainer) -> String {
    let bundle = c.dir.display().to_string();
    let before_mounts = mounts_mentioning(&bundle);
    for cmd in ["create", "run"] {
        let out = c.strata(&[cmd, &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{cmd} accepted bad input");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{cmd}: expected one line, got:\n{stderr}");
        assert!(!c.root.join(&c.id).exists(), "{cmd}: state directory left behind");
        assert!(!c.cgroup_dir().exists(), "{cmd}: cgroup left behind");
        assert_eq!(mounts_mentioning(&bundle), before_mounts, "{cmd}: mount left behind");
        let ps = std::process::Command::new("pgrep").args(["-f", &c.id]).output().unwrap();
        assert!(ps.stdout.is_empty(), "{cmd}: process left behind: {}", String::from_utf8_lossy(&ps.stdout));
    }
    let out = c.strata(&["create", &c.id]).stdin(Stdio::null()).output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_config() {
    let c = TestContainer::new("noconfig", "true");
    let err = expect_refusal(&c);
    assert!(err.contains(&format!("{}/config.json", c.dir.display())) && err.contains("No such file"), "{err}");
}

#[test]
fn invalid_json() {
    let c = TestContainer::new("badjson", "true");
    std::fs::write(c.dir.join("config.json"), "{\"ociVersion\": \"1.0.2\", \"process\": ").unwrap();
    let err = expect_refusal(&c);
    assert!(err.contains("config.json") && err.contains("line 1"), "{err}");
}

#[test]
fn unknown_namespace_type() {
    let mut c = TestContainer::new("badns", "true");
    c.config["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "galaxy"}));
    c.write_config();
    let err = expect_refusal(&c);
    assert!(err.contains("config.json: linux.namespaces[6].type") && err.contains("galaxy"), "{err}");
}

#[test]
fn missing_rootfs() {
    let mut c = TestContainer::new("norootfs", "true");
    c.config["root"]["path"] = json!("does-not-exist");
    c.write_config();
    let err = expect_refusal(&c);
    assert!(err.contains("config.json: root.path") && err.contains("does-not-exist"), "{err}");
}

#[test]
fn mount_escaping_the_rootfs() {
    let mut c = TestContainer::new("escape", "true");
    c.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/../../etc/owned", "type": "tmpfs", "source": "tmpfs"}));
    c.write_config();
    let err = expect_refusal(&c);
    assert!(err.contains("config.json: mounts[7].destination") && err.contains("escapes"), "{err}");
}

#[test]
fn unknown_capability() {
    let mut c = TestContainer::new("badcap", "true");
    c.config["process"]["capabilities"]["effective"].as_array_mut().unwrap().push(json!("CAP_TELEPORT"));
    c.write_config();
    let err = expect_refusal(&c);
    assert!(err.contains("config.json: process.capabilities.effective") && err.contains("TELEPORT"), "{err}");
}

#[test]
fn missing_program_fails_at_create() {
    let mut c = TestContainer::new("noprog", "true");
    c.config["process"]["args"] = json!(["no-such-program"]);
    c.write_config();
    let err = expect_refusal(&c);
    assert!(err.contains("process.args[0]") && err.contains("no-such-program"), "{err}");
}

#[test]
fn memory_limit_on_the_hybrid_host_is_refused() {
    let layout = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let hybrid = layout.lines().any(|l| l.contains(" - cgroup "));
    let mut c = TestContainer::new("memory", "true");
    c.config["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    c.write_config();
    if !hybrid {
        // On a pure v2 host with the memory controller this is valid; the VM suite covers it.
        return;
    }
    let err = expect_refusal(&c);
    assert!(err.contains("linux.resources.memory") && err.contains("`memory`") && err.contains("hybrid"), "{err}");
}

#[test]
fn symlink_in_the_image_cannot_redirect_a_mount_outside() {
    // An image whose /data is a symlink to a host path: the tmpfs lands inside the rootfs.
    let rootfs = tempfile::tempdir().unwrap();
    build_busybox_rootfs(rootfs.path());
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.path().join("data")).unwrap();
    let mut c = TestContainer::new("symlink", "touch /data/inside && echo ok");
    c.config["root"]["path"] = json!(rootfs.path());
    c.config["root"]["readonly"] = json!(false);
    c.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs"}));
    assert_eq!(c.run_ok(), "ok\n");
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "the mount went outside the rootfs");
    assert_eq!(mounts_mentioning(&outside.path().display().to_string()), 0);
}

/// The corpus of `fuzz/fuzz_targets/runtime_config.rs`, with its check: loading a bundle with
/// each config.json succeeds or fails with an error naming config.json, never a panic; the
/// default config loads and every broken one is refused.
#[test]
fn runtime_config_corpus_loads_or_names_the_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/runtime_config");
    let mut refused = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&path, tmp.path().join("config.json")).expect("copy");
        std::fs::create_dir(tmp.path().join("rootfs")).expect("rootfs");
        match engine::bundle::Bundle::load(tmp.path()) {
            Ok(_) => assert!(path.ends_with("default.json"), "{} was accepted", path.display()),
            Err(e) => {
                assert!(e.to_string().contains("config.json"), "{}: {e}", path.display());
                refused += 1;
            }
        }
    }
    assert!(refused >= 5, "only {refused} refusals in {}", dir.display());
}

/// The corpus of `fuzz/fuzz_targets/shim_ttrpc.rs`, with its checks: the frames cut from each
/// input do not depend on the read sizes, an oversize frame is an error naming the limit, and
/// every request body decodes or is refused. The seeds' expected outcomes are checked too.
#[test]
fn shim_ttrpc_corpus_frames_the_same_whatever_the_reads() {
    use engine::shimv2::ttrpc::{TYPE_REQUEST, frames_of, parse_request};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shim_ttrpc");
    let mut decoded = 0;
    let mut refused = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read");
        let Some((&first, rest)) = data.split_first() else { continue };
        let whole = frames_of(rest, rest.len());
        assert_eq!(whole, frames_of(rest, usize::from(first % 17) + 1), "{}", path.display());
        assert_eq!(whole, frames_of(rest, 1), "{}", path.display());
        if path.ends_with("oversize_header") {
            assert!(whole.1.as_deref().is_some_and(|e| e.contains("limit")), "{}: {:?}", path.display(), whole.1);
        }
        for f in whole.0.iter().filter(|f| f.kind == TYPE_REQUEST) {
            match parse_request(&f.body) {
                Ok(_) => decoded += 1,
                Err(e) => {
                    assert!(e.message.contains("malformed"), "{}: {e:?}", path.display());
                    refused += 1;
                }
            }
        }
    }
    assert!(decoded >= 3 && refused >= 1, "decoded {decoded}, refused {refused} in {}", dir.display());
}

/// The corpus of `fuzz/fuzz_targets/shim_options.rs` with its check (options or
/// `INVALID_ARGUMENT`, never a panic), and the seeds' outcomes: a ConfigPath naming a device is
/// refused without being read, unknown TOML and unknown types are refused.
#[test]
fn shim_options_corpus_decodes_or_refuses() {
    use containerd_shim::protos::protobuf::MessageField;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use engine::shimv2::options::{check_fuzz_input, parse};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shim_options");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read");
        check_fuzz_input(&data);
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let url = ["containerd.runc.v1.Options", "runc.v1.Options", "runtimeoptions.v1.Options", "other.v1.Options"]
            [usize::from(data[0] % 4)];
        let mut any = Any::new();
        any.type_url = url.into();
        any.value = data[1..].to_vec();
        let result = parse(&MessageField::some(any));
        match name.as_str() {
            "runtimeoptions-body" | "runc-io-uid-gid" | "runc-shim-cgroup" | "runc-systemd-cgroup" => {
                assert!(result.is_ok(), "{name}: {result:?}")
            }
            "runtimeoptions-fifo-path" => {
                assert!(result.is_err_and(|e| e.message.contains("not a regular file")), "{name}")
            }
            _ => assert!(result.is_err(), "{name}: {result:?}"),
        }
        replayed += 1;
    }
    assert!(replayed >= 8, "only {replayed} corpus files in {}", dir.display());
}
