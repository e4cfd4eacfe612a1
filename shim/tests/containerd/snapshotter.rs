//! strata's snapshotter as containerd's `strata` proxy snapshot plugin: images imported into it,
//! containers run from it with strata's runtime, snapshots prepared, committed, stacked and
//! removed through `ctr`, restarts of the snapshotter and of containerd, and file dedup seen on
//! disk (inodes shared between layers of different digests and with strata's own store).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Containerd;

const SNAP: [&str; 3] = ["snapshots", "--snapshotter", "strata"];

fn snap_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    SNAP.iter().copied().chain(args.iter().copied()).collect()
}

/// Each snapshot on disk: (its key as the snapshotter knows it, kind, its tree).
fn on_disk(c: &Containerd) -> Vec<(String, String, PathBuf)> {
    let dir = c.snapshotter_store().join("containerd/snapshots");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("the snapshotter's snapshots directory").flatten() {
        // (a snapshot being removed moves out between the listing and the read)
        let Ok(data) = std::fs::read(e.path().join("info.json")) else { continue };
        let info: serde_json::Value = serde_json::from_slice(&data).expect("info.json is JSON");
        let key = info["key"].as_str().unwrap_or_default().to_string();
        let kind = info["kind"].as_str().unwrap_or_default().to_string();
        out.push((key, kind, e.path().join("fs")));
    }
    out
}

/// The committed snapshot whose key (containerd's backend key, `<ns>/<n>/<name>`) ends in `name`.
fn tree_of(c: &Containerd, name: &str) -> PathBuf {
    on_disk(c)
        .into_iter()
        .find(|(k, kind, _)| kind == "committed" && k.ends_with(&format!("/{name}")))
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no committed snapshot {name} on disk: {:?}", on_disk(c)))
}

/// The key of the image's one layer snapshot: its chain ID, as `ctr snapshots ls` shows it.
fn layer_key(c: &Containerd) -> String {
    let ls = c.ok(&snap_args(&["ls"]));
    ls.lines()
        .find(|l| l.contains("Committed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no committed snapshot after the import:\n{ls}"))
        .to_string()
}

/// Mounts what `ctr snapshots mounts TARGET KEY` prints for an active snapshot above a layer
/// (`mount -t overlay overlay TARGET -o OPTIONS`); unmounts it when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(c: &Containerd, target: &Path, key: &str) -> Mounted {
        std::fs::create_dir_all(target).expect("mount point");
        let cmd = c.ok(&snap_args(&["mounts", &target.display().to_string(), key]));
        let f: Vec<&str> = cmd.split_whitespace().collect();
        assert!(
            f.len() == 7 && f[..4] == ["mount", "-t", "overlay", "overlay"] && f[5] == "-o",
            "mount command {cmd:?}"
        );
        nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(f[6]))
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Waits until the snapshotter's adoptions have made their changes to the committed trees: a
/// commit answers before its files are shared, and Usage (which reads the trees) waits for that.
fn adopted(c: &Containerd) {
    c.ok(&snap_args(&["usage"]));
}

/// Waits until `ok` holds (containerd removes snapshots from the backend in its own GC, soon
/// after the last reference goes).
fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_strata_snapshotter_imports_runs_commits_stacks_removes_and_survives_restarts() {
    let mut c = Containerd::start_with_snapshotter();
    let layer = layer_key(&c);
    // strata's differ unpacked the layer (containerd checked the diff ID it answered).
    let applied = if c.strata_differ() { 1 } else { 0 };
    let log = c.snapshotter_log();
    assert!(
        applied == 0 || (log.contains("applied layer sha256:") && log.contains(&format!("diff ID {layer}"))),
        "{log}"
    );
    // A layer for another snapshotter goes to containerd's own differ: an import into overlayfs
    // beside it unpacks as ever (on 1.7 strata's differ is asked first and declines; 2.x's
    // transfer service asks the differ its unpack_config names).
    c.ok(&["images", "import", "--snapshotter", "overlayfs", &crate::harness::image_archive().display().to_string()]);
    let overlay = c.ok(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert!(overlay.lines().any(|l| l.starts_with(&layer) && l.contains("Committed")), "{overlay}");
    assert_eq!(c.snapshotter_log().matches("applied layer").count(), applied, "{}", c.snapshotter_log());

    // The import committed the layer; its files went into the store's content pool (new content
    // is linked there just after the commit answers).
    let tree = tree_of(&c, &layer);
    let busybox = || std::fs::metadata(tree.join("bin/busybox")).expect("bin/busybox in the layer's snapshot");
    eventually("bin/busybox was not linked into the pool", || busybox().nlink() >= 2);
    let busybox = busybox();
    let pooled = std::fs::read_dir(c.snapshotter_store().join("pool"))
        .expect("pool")
        .flatten()
        .any(|e| e.metadata().is_ok_and(|m| m.ino() == busybox.ino()));
    assert!(pooled, "no pool file shares bin/busybox's inode");

    // A container runs on it (strata's runtime), its root an overlay above the store's layer.
    let out = c.ok(&c.run_args(
        &["--rm", "--snapshotter", "strata"],
        "snap-run",
        &["sh", "-c", "echo written > /tmp/f && cat /tmp/f && grep ' / / ' /proc/self/mountinfo"],
    ));
    assert!(out.contains("written"), "{out}");
    assert!(out.contains("overlay") && out.contains(&tree.display().to_string()), "root is not the layer: {out}");

    // prepare, write, commit, stack, usage, label, remove: as `ctr snapshots` does them.
    c.ok(&snap_args(&["prepare", "work", &layer]));
    {
        let _m = Mounted::new(&c, &c.snapshotter_store().with_file_name("mnt-work"), "work");
        std::fs::write(c.snapshotter_store().with_file_name("mnt-work").join("hello"), "from an active snapshot\n")
            .expect("write");
        // still mounted, its upper layer writable: its files must not join the pool yet
        let refused = c.ctr(&snap_args(&["commit", "committed", "work"]));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("mnt-work") && err.contains("unmount it"), "{err}");
    }
    c.ok(&snap_args(&["commit", "committed", "work"]));
    // (`ctr snapshots view` makes no GC root since containerd 1.7, so its view would be
    // collected at once: an active snapshot above the committed one shows what it holds.)
    c.ok(&snap_args(&["prepare", "look", "committed"]));
    {
        let target = c.snapshotter_store().with_file_name("mnt-look");
        let _m = Mounted::new(&c, &target, "look");
        assert_eq!(std::fs::read_to_string(target.join("hello")).expect("hello"), "from an active snapshot\n");
        assert!(target.join("bin/busybox").exists(), "the snapshot lacks the layer below");
    }
    let usage = c.ok(&snap_args(&["usage", "committed"]));
    let inodes = usage.lines().nth(1).and_then(|l| l.split_whitespace().last()).and_then(|n| n.parse::<u64>().ok());
    assert!(inodes.is_some_and(|n| n >= 1), "usage of a snapshot holding a file: {usage}");
    let info = c.ok(&snap_args(&["info", "committed"]));
    assert!(info.contains("Committed") && info.contains(&layer), "{info}");
    c.ok(&snap_args(&["label", "committed", "team=storage"]));
    assert!(c.ok(&snap_args(&["info", "committed"])).contains("\"team\": \"storage\""));

    let refused = c.ctr(&snap_args(&["rm", "committed"]));
    assert!(!refused.status.success(), "a snapshot with another above it was removed");
    c.ok(&snap_args(&["rm", "look", "committed"]));
    eventually("the removed snapshots stay on disk", || on_disk(&c).len() == 1);

    // The snapshotter killed with an active snapshot: it comes back with everything.
    c.ok(&snap_args(&["prepare", "survivor", &layer]));
    c.kill_9_snapshotter_and_restart();
    // containerd's connection to the plugin comes back after its reconnect backoff (seconds).
    eventually("containerd did not reconnect to the restarted snapshotter", || {
        c.ctr(&snap_args(&["ls"])).status.success()
    });
    let ls = c.ok(&snap_args(&["ls"]));
    assert!(ls.lines().any(|l| l.starts_with("survivor") && l.contains("Active")), "{ls}");
    c.ok(&snap_args(&["rm", "survivor"]));
    let out = c.ok(&c.run_args(&["--rm", "--snapshotter", "strata"], "after-kill", &["echo", "back"]));
    assert!(out.contains("back"), "{out}");

    // containerd restarted: the snapshots are the plugin's, nothing is lost.
    c.restart();
    assert_eq!(layer_key(&c), layer);
    let out = c.ok(&c.run_args(&["--rm", "--snapshotter", "strata"], "after-restart", &["echo", "again"]));
    assert!(out.contains("again"), "{out}");
    eventually("snapshots left behind by removed containers", || on_disk(&c).len() == 1);
    // (a removed snapshot's directory is deleted from tmp/ after the snapshotter answers Remove)
    let tmp = c.snapshotter_store().join("containerd/tmp");
    eventually("the snapshotter left removed snapshots in tmp/", || std::fs::read_dir(&tmp).expect("tmp").count() == 0);
}

#[test]
fn a_rebuilt_base_and_strata_s_own_import_share_the_snapshotter_s_inodes() {
    let c = Containerd::start_with_snapshotter();
    // The same files in a layer of another digest, as a rebuild of a base image makes.
    let dir = tempfile::tempdir().expect("temporary directory");
    let rebuilt = make_image(dir.path(), "rebuilt", "rebuilt", 0);
    c.ok(&["images", "import", "--snapshotter", "strata", &rebuilt.display().to_string()]);
    adopted(&c);
    let layers: Vec<PathBuf> = on_disk(&c).into_iter().filter(|s| s.1 == "committed").map(|s| s.2).collect();
    assert_eq!(layers.len(), 2, "two layers of different digests: {:?}", on_disk(&c));
    let ino = |p: &Path| std::fs::metadata(p.join("bin/busybox")).expect("bin/busybox").ino();
    assert_eq!(ino(&layers[0]), ino(&layers[1]), "the rebuilt base's busybox has an inode of its own");
    assert!(layers.iter().any(|l| l.join("etc/rebuilt").exists()));

    // strata's own import into the same store shares them too.
    let archive = Path::new(env!("CARGO_TARGET_TMPDIR")).join("strata-busybox-image.tar");
    assert!(archive.exists(), "the harness builds {}", archive.display());
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["image", "--store"])
        .arg(c.snapshotter_store())
        .args(["import", "--name", "own"])
        .arg(&archive)
        .output()
        .expect("strata image import");
    assert!(out.status.success(), "strata image import: {}", String::from_utf8_lossy(&out.stderr));
    let own: Vec<PathBuf> = std::fs::read_dir(c.snapshotter_store().join("snapshots"))
        .expect("the store's snapshots")
        .flatten()
        .map(|e| e.path().join("fs"))
        .collect();
    assert_eq!(own.len(), 1);
    assert_eq!(ino(&own[0]), ino(&layers[0]), "strata's own snapshot does not share the snapshotter's inode");

    // The store's du and fsck see the snapshotter's snapshots.
    let strata = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .arg("--store")
            .arg(c.snapshotter_store())
            .output()
            .expect("strata")
    };
    let du = strata(&["image", "du", "--format", "json"]);
    let du: serde_json::Value = serde_json::from_slice(&du.stdout).expect("du --format json");
    assert_eq!(du["containerdSnapshots"], 2, "{du}");
    assert!(du["containerdBytes"].as_u64().is_some_and(|b| b > 0), "{du}");
    let fsck = strata(&["fsck"]);
    let text = String::from_utf8_lossy(&fsck.stdout).into_owned();
    assert!(fsck.status.success(), "fsck of a sound store: {text}");
    assert!(text.contains("and 2 committed containerd snapshots"), "{text}");
    // A pooled file changed in place: every tree that shares it is named.
    let group = layers[0].join("etc/group");
    assert!(std::fs::metadata(&group).expect("etc/group").nlink() >= 3, "etc/group is not shared");
    std::fs::write(&group, "changed\n").expect("writing a shared file");
    let fsck = strata(&["fsck"]);
    let text = String::from_utf8_lossy(&fsck.stdout).into_owned();
    assert!(!fsck.status.success(), "fsck passed a changed pool file: {text}");
    let named: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("(containerd snapshot") && l.contains("/etc/group: its content"))
        .filter_map(|l| l.split(" (containerd snapshot").next())
        .collect();
    assert_eq!(named.len(), 2, "both containerd snapshots holding etc/group are named: {text}");
}

#[test]
fn a_rebuild_that_touched_every_file_shares_their_data() {
    let c = Containerd::start_with_snapshotter();
    // The harness's image again, every file with another mtime: no file can share the first
    // one's inode (the mtime is part of it); where the kernel reads data-only overlay layers
    // (6.16 and later) the big ones share its data.
    let dir = tempfile::tempdir().expect("temporary directory");
    let touched = make_image_at(dir.path(), "touched", "", 0, 86_400);
    c.ok(&["images", "import", "--snapshotter", "strata", &touched.display().to_string()]);
    adopted(&c);
    let layers: Vec<PathBuf> = on_disk(&c).into_iter().filter(|s| s.1 == "committed").map(|s| s.2).collect();
    assert_eq!(layers.len(), 2, "{:?}", on_disk(&c));
    let meta = |p: &Path| std::fs::symlink_metadata(p.join("bin/busybox")).expect("bin/busybox");
    let (old, new) = match meta(&layers[0]).mtime() {
        86_400 => (&layers[1], &layers[0]),
        _ => (&layers[0], &layers[1]),
    };
    assert_eq!(meta(new).mtime(), 86_400);
    let data = new.parent().expect("snapshot directory").join("data");
    if kernel_reads_data_layers() {
        assert!(meta(new).blocks() * 512 <= 4096, "the rebuilt busybox holds its own data: {:?}", meta(new));
        let linked: Vec<u64> = std::fs::read_dir(&data)
            .expect("the data layer")
            .flatten()
            .map(|e| e.metadata().expect("stat").ino())
            .collect();
        assert!(linked.contains(&meta(old).ino()), "the data layer does not hold the first busybox's inode");
    } else {
        assert!(!data.exists(), "a data layer on a kernel that cannot mount it");
    }

    // A container of the rebuild runs that busybox and reads what the host's holds.
    let mut args =
        c.run_args(&["--rm", "--snapshotter", "strata"], "touched-run", &["busybox", "md5sum", "/bin/busybox"]);
    let image = args.len() - 5;
    args[image] = "docker.io/library/strata-busybox:touched";
    let out = c.ok(&args);
    let host = Command::new("md5sum").arg("/bin/busybox").output().expect("md5sum");
    let want = String::from_utf8_lossy(&host.stdout).split_whitespace().next().unwrap_or_default().to_string();
    assert!(out.starts_with(&want), "the container's busybox differs: {out:?} (host {want})");

    // fsck checks the data layer against the pool.
    let fsck = || {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("fsck")
            .arg("--store")
            .arg(c.snapshotter_store())
            .output()
            .expect("strata fsck");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, text) = fsck();
    assert!(ok, "fsck of a sound store: {text}");
    if kernel_reads_data_layers() {
        // a data layer that names other content is found
        let entry = std::fs::read_dir(&data).expect("the data layer").flatten().next().expect("an entry").path();
        let wrong = entry.with_file_name("0".repeat(64));
        std::fs::rename(&entry, &wrong).expect("rename");
        let (ok, text) = fsck();
        assert!(!ok && text.contains("it is not the pool's file of that content"), "{text}");
        std::fs::rename(&wrong, &entry).expect("rename back");
    }
}

/// Linux 6.16 or later: overlayfs reads data-only lower layers without metacopy=on.
fn kernel_reads_data_layers() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 16)
}

/// Builds an image archive with make-image.sh (`note` and `files` as it takes them).
fn make_image(dir: &Path, name: &str, note: &str, files: u32) -> PathBuf {
    make_image_at(dir, name, note, files, 0)
}

/// [`make_image`] with every file's mtime `mtime` seconds.
fn make_image_at(dir: &Path, name: &str, note: &str, files: u32, mtime: u64) -> PathBuf {
    make_image_with(dir, name, note, files, &[("MTIME", &mtime.to_string())])
}

/// [`make_image`] with make-image.sh's environment `env` (`MTIME`, `DIFF_ID`, `ESCAPE`).
fn make_image_with(dir: &Path, name: &str, note: &str, files: u32, env: &[(&str, &str)]) -> PathBuf {
    let out = dir.join(format!("{name}.tar"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd/make-image.sh");
    let st = Command::new("sh")
        .envs(env.iter().copied())
        .arg(script)
        .arg(&out)
        .arg(format!("docker.io/library/strata-busybox:{name}"))
        .arg(note)
        .arg(files.to_string())
        .status()
        .expect("make-image.sh");
    assert!(st.success(), "make-image.sh {name} failed");
    out
}

#[test]
fn a_snapshotter_killed_during_its_unpack_leaves_nothing_half_made() {
    let c = Containerd::start_with_snapshotter();
    if !c.strata_differ() {
        eprintln!("this containerd has no proxy diff plugins: the test below kills containerd's unpack");
        return;
    }
    killed_during_an_unpack(c);
}

#[test]
fn a_snapshotter_killed_during_containerd_s_unpack_leaves_nothing_half_made() {
    let c = Containerd::start_with_snapshotter_and_containerd_s_differ();
    assert!(!c.snapshotter_log().contains("applied layer"), "{}", c.snapshotter_log());
    killed_during_an_unpack(c);
}

/// Kills the snapshotter while a layer of 4000 files is unpacked into it (by strata's differ in
/// the snapshotter, or by containerd's), then checks that every committed snapshot is whole, the
/// import succeeds again and runs, and the unpack's leftovers go.
fn killed_during_an_unpack(mut c: Containerd) {
    const FILES: u32 = 4000;
    let dir = tempfile::tempdir().expect("temporary directory");
    let big = make_image(dir.path(), "big", "", FILES);
    let big = big.display().to_string();
    let mut import = c.ctr_cmd(&["images", "import", "--snapshotter", "strata", &big]).spawn().expect("ctr import");
    // killed while containerd writes the layer into an active snapshot
    eventually("no active snapshot appeared during the import", || on_disk(&c).iter().any(|s| s.1 == "active"));
    c.kill_9_snapshotter_and_restart();
    // strata's differ dies with the snapshotter and the import fails; containerd's writes on, and
    // a snapshotter back before the commit commits it, so the import may even succeed; either
    // way what is on disk must be whole.
    let st = import.wait().expect("ctr import");
    eprintln!("the interrupted import exited with {st}");
    eventually("containerd did not reconnect to the restarted snapshotter", || {
        c.ctr(&snap_args(&["ls"])).status.success()
    });
    // What the crash left is whole: every committed snapshot holds its full tree.
    let check = |c: &Containerd| {
        for (key, kind, tree) in on_disk(c) {
            if kind == "committed" && tree.join("data").exists() {
                let n = std::fs::read_dir(tree.join("data")).expect("data").count();
                assert_eq!(n, FILES as usize, "committed snapshot {key} holds {n} of {FILES} files");
            }
        }
    };
    adopted(&c);
    check(&c);
    c.ok(&["images", "import", "--snapshotter", "strata", &big]);
    adopted(&c);
    check(&c);
    let mut run = c.run_args(&["--rm", "--snapshotter", "strata"], "big-run", &["sh", "-c", "ls /data | grep -c ."]);
    let image = run.iter().position(|a| *a == crate::harness::IMAGE).expect("the image argument");
    run[image] = "docker.io/library/strata-busybox:big";
    let out = c.ok(&run);
    assert_eq!(out.trim(), FILES.to_string(), "{out}");
    // The interrupted unpack's active snapshot goes with containerd's GC; nothing stays in tmp/.
    eventually("an active snapshot of the interrupted unpack stayed", || {
        on_disk(&c).iter().all(|s| s.1 == "committed")
    });
    // (a removed snapshot's directory is deleted from tmp/ after the snapshotter answers Remove)
    let tmp = c.snapshotter_store().join("containerd/tmp");
    eventually("the snapshotter left removed snapshots in tmp/", || std::fs::read_dir(&tmp).expect("tmp").count() == 0);
}

/// Waits until only committed snapshots are on disk and the snapshotter's `tmp/` is empty.
fn nothing_left_of_a_failed_unpack(c: &Containerd) {
    eventually("an active snapshot of the failed unpack stayed", || on_disk(c).iter().all(|s| s.1 == "committed"));
    let tmp = c.snapshotter_store().join("containerd/tmp");
    eventually("the snapshotter left the failed unpack in tmp/", || std::fs::read_dir(&tmp).expect("tmp").count() == 0);
}

#[test]
fn a_layer_that_is_not_its_diff_id_is_refused_by_containerd_and_leaves_nothing() {
    let c = Containerd::start_with_snapshotter();
    let dir = tempfile::tempdir().expect("temporary directory");
    let wrong = "0".repeat(64);
    let bad = make_image_with(dir.path(), "wrong-diff-id", "wrong", 0, &[("DIFF_ID", &wrong)]);
    let out = c.ctr(&["images", "import", "--snapshotter", "strata", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    // strata's differ answered the layer's true diff ID; containerd compared it with the config's
    assert!(!out.status.success() && err.contains("wrong diff id"), "{err}");
    // (the layers are uncompressed tars: each one's diff ID is its digest)
    let log = c.snapshotter_log();
    let applied: Vec<&str> = log.lines().filter(|l| l.contains("applied layer")).collect();
    assert_eq!(applied.len(), if c.strata_differ() { 2 } else { 0 }, "{log}");
    for line in applied {
        let digest = line.split_whitespace().nth(3).unwrap_or_default();
        assert!(digest.starts_with("sha256:") && line.contains(&format!("diff ID {digest},")), "{line}");
    }
    nothing_left_of_a_failed_unpack(&c);
    let ls = c.ok(&snap_args(&["ls"]));
    assert_eq!(ls.lines().skip(1).count(), 1, "only the test image's layer stays: {ls}");
}

#[test]
fn a_layer_that_writes_through_a_symlink_out_of_the_snapshot_is_refused_and_leaves_nothing() {
    let c = Containerd::start_with_snapshotter();
    let dir = tempfile::tempdir().expect("temporary directory");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let bad = make_image_with(dir.path(), "escape", "escape", 0, &[("ESCAPE", &outside.display().to_string())]);
    let out = c.ctr(&["images", "import", "--snapshotter", "strata", &bad.display().to_string()]);
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0, "the layer wrote outside its snapshot");
    if !c.strata_differ() {
        // (containerd's own differ resolves the symlink inside the snapshot and writes there)
        eprintln!("containerd's differ unpacked it: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("escape/pwned"), "the import did not fail naming the entry: {err}");
    let log = c.snapshotter_log();
    assert!(log.lines().any(|l| l.contains("apply of layer") && l.contains("escape/pwned")), "{log}");
    nothing_left_of_a_failed_unpack(&c);
}

#[test]
fn an_image_pulled_from_a_registry_is_unpacked_by_strata_s_differ_and_runs() {
    let c = Containerd::start_with_snapshotter();
    let registry = crate::registry::Registry::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let archive = make_image(dir.path(), "pulled", "pulled from a registry", 0);
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("layout");
    let st = Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout).status().expect("tar");
    assert!(st.success(), "tar -xf {}", archive.display());
    registry.push(&layout, "test", "strata/pulled:1", "oci");
    let reference = format!("{}/strata/pulled:1", registry.host());
    c.ok(&["images", "pull", "--plain-http", "--snapshotter", "strata", &reference]);
    let log = c.snapshotter_log();
    // (the test image's layer, then the pulled one)
    let applied = if c.strata_differ() { 2 } else { 0 };
    assert_eq!(log.matches("applied layer").count(), applied, "{log}");
    let mut run = c.run_args(&["--rm", "--snapshotter", "strata"], "pulled-run", &["cat", "/etc/rebuilt"]);
    let image = run.iter().position(|a| *a == crate::harness::IMAGE).expect("the image argument");
    run[image] = &reference;
    assert_eq!(c.ok(&run).trim(), "pulled from a registry");
}
