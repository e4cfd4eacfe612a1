//! Pulling over the distribution v2 API: from Debian's `docker-registry` (started here on 127.0.0.1 with
//! a private config, images pushed by skopeo), and from a small in-memory registry that demands Bearer
//! tokens and answers Range requests. Needs root for the overlay mount, as CI runs it.

mod common;
mod registry;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use layerstore::{Error, NoProgress, PullOptions, Store};
use registry::{Registry, free_port};
use serde_json::json;

fn app_layer(size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    Layer::new().dir("app").file("app/data", &data).file("etc/app.conf", b"pulled").tar()
}

fn busybox_image(dir: &Path) -> (PathBuf, Written) {
    let layout = dir.join("layout");
    let image = Image::new(vec![(busybox_layer(), Comp::Gzip), (app_layer(300_000), Comp::Gzip)]);
    let w = image.write_layout(&layout, "latest");
    (layout, w)
}

fn assert_fsck_clean(store: &Store) {
    let report = store.fsck(false).expect("fsck");
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}

#[test]
fn pull_from_docker_registry_gives_the_source_digests_runs_and_dedups() {
    let registry = Registry::start();
    let (tmp, store) = store();
    let (layout, w) = busybox_image(tmp.path());
    registry.push(&layout, "latest", "busybox:latest", "oci");
    let reference = format!("{}/busybox:latest", registry.host());

    let first = store.pull(&reference, &PullOptions::default(), &NoProgress).expect("pull");
    assert_eq!(first.record.name, reference);
    assert_eq!(first.record.manifest, w.manifest);
    assert_eq!(first.record.config, w.config);
    assert_eq!(first.record.layers, w.layers);
    assert_eq!((first.blobs_fetched, first.blobs_present), (3, 0));

    // The image runs: its overlay root holds a working busybox.
    {
        let rootfs = Rootfs::new(&store, "pulled", &reference);
        let out = Command::new("chroot").arg(&rootfs.path).args(["/bin/sh", "-c", "cat /etc/app.conf"]).output();
        let out = out.expect("chroot");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pulled", "{}", String::from_utf8_lossy(&out.stderr));
    }

    // Layer dedup: a second pull, by tag or by digest, downloads no blob.
    let again = store.pull(&reference, &PullOptions::default(), &NoProgress).expect("second pull");
    assert_eq!((again.blobs_fetched, again.bytes_fetched, again.blobs_present), (0, 0, 3));
    let by_digest = format!("{}/busybox@{}", registry.host(), w.manifest);
    let pinned = store.pull(&by_digest, &PullOptions::default(), &NoProgress).expect("pull by digest");
    assert_eq!((pinned.record.manifest.clone(), pinned.bytes_fetched), (w.manifest.clone(), 0));
    assert_fsck_clean(&store);
}

/// A pull that drops layer blobs (the CLI's default) keeps none, and fetches no layer whose
/// snapshot the store has with a tar split: a second image on the same base fetches its config and
/// its own layer only, a pull again fetches nothing; export rebuilds the dropped layers.
#[test]
fn a_lean_pull_keeps_no_layer_blob_and_fetches_no_layer_it_has_unpacked() {
    let registry = Registry::start();
    let (tmp, store) = store();
    let (layout, w) = busybox_image(tmp.path());
    registry.push(&layout, "latest", "busybox:latest", "oci");
    let other = Image::new(vec![(busybox_layer(), Comp::Gzip), (app_layer(1000), Comp::Gzip)]);
    let w2 = other.write_layout(&tmp.path().join("other"), "latest");
    registry.push(&tmp.path().join("other"), "latest", "other:latest", "oci");
    let lean = PullOptions { drop_layer_blobs: true, ..PullOptions::default() };

    let reference = format!("{}/busybox:latest", registry.host());
    let first = store.pull(&reference, &lean, &NoProgress).expect("pull");
    assert_eq!((first.blobs_fetched, first.blobs_present), (3, 0));
    assert!(first.record.layer_blobs_dropped);
    assert!(w.layers.iter().all(|l| !store.blobs().contains(l)), "a layer blob was kept");
    let second = store.pull(&format!("{}/other:latest", registry.host()), &lean, &NoProgress).expect("pull other");
    assert_eq!((second.blobs_fetched, second.blobs_present), (2, 1), "the shared base was fetched again");
    assert!(w2.layers.iter().all(|l| !store.blobs().contains(l)));
    let again = store.pull(&reference, &lean, &NoProgress).expect("pull again");
    assert_eq!((again.blobs_fetched, again.bytes_fetched, again.blobs_present), (0, 0, 3));
    assert_fsck_clean(&store);
    let out = tmp.path().join("exported");
    store.export(&reference, &out).expect("export");
    let imported = Store::open(&tmp.path().join("elsewhere")).expect("open").import(&out, None).expect("import");
    assert_eq!((&imported[0].config, &imported[0].chain), (&first.record.config, &first.record.chain));
}

#[test]
fn pull_of_a_docker_schema2_manifest_keeps_the_layers() {
    let registry = Registry::start();
    let (tmp, store) = store();
    let (layout, w) = busybox_image(tmp.path());
    registry.push(&layout, "latest", "busybox:v2s2", "v2s2");
    let reference = format!("{}/busybox:v2s2", registry.host());
    let pulled = store.pull(&reference, &PullOptions::default(), &NoProgress).expect("pull schema2");
    assert_eq!(pulled.record.layers, w.layers);
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.blobs().read(&pulled.record.manifest).expect("manifest")).expect("json");
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert!(store.snapshot_path(&pulled.record.chain[1]).join("fs/etc/app.conf").exists());
    assert_fsck_clean(&store);
}

#[test]
fn pull_of_a_missing_tag_is_one_error_naming_it() {
    let registry = Registry::start();
    let (_tmp, store) = store();
    let reference = format!("{}/busybox:nope", registry.host());
    let err = store.pull(&reference, &PullOptions::default(), &NoProgress).expect_err("missing tag pulled");
    let msg = err.to_string();
    assert!(msg.contains(&reference) && msg.contains("HTTP 404") && msg.contains("/manifests/nope"), "{msg}");
    assert!(contents(&store).is_empty());
}

#[test]
fn blob_corrupted_in_the_registry_is_a_digest_error_and_stores_nothing() {
    let registry = Registry::start();
    let (tmp, store) = store();
    let (layout, w) = busybox_image(tmp.path());
    registry.push(&layout, "latest", "busybox:latest", "oci");
    let file = registry.blob_file(&w.layers[1]);
    let mut data = std::fs::read(&file).expect("registry blob");
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&file, data).expect("corrupt blob");

    let reference = format!("{}/busybox:latest", registry.host());
    let err = store.pull(&reference, &PullOptions::default(), &NoProgress).expect_err("corrupt blob pulled");
    assert!(matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == w.layers[1]), "{err}");
    assert!(err.to_string().contains(&w.layers[1].to_string()), "{err}");
    assert!(contents(&store).is_empty(), "left behind: {:?}", contents(&store));
    assert_fsck_clean(&store);
}

/// What the in-memory registry saw.
#[derive(Default)]
struct Seen {
    token_auth: Vec<Option<String>>,
    ranges: Vec<(String, String)>,
    unauthorized: usize,
    /// Blob GETs answered, by digest.
    blob_gets: BTreeMap<String, usize>,
}

/// A registry thread serving blobs and manifests from memory, behind a Bearer token that needs the
/// basic credentials `u:p`; it answers `Range: bytes=N-` with 206.
struct FakeRegistry {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl FakeRegistry {
    fn start(manifests: BTreeMap<String, (String, Vec<u8>)>, blobs: BTreeMap<String, Vec<u8>>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = serve(stream, port, &manifests, &blobs, &seen2);
            }
        });
        FakeRegistry { port, seen }
    }
}

fn respond(mut s: TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// The path of an HTTP request on `stream` and its headers (names lower-cased).
fn read_request(stream: &TcpStream) -> std::io::Result<(String, BTreeMap<String, String>)> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((path, headers))
}

fn serve(
    stream: TcpStream,
    port: u16,
    manifests: &BTreeMap<String, (String, Vec<u8>)>,
    blobs: &BTreeMap<String, Vec<u8>>,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let (path, headers) = read_request(&stream)?;
    let mut seen = seen.lock().expect("seen");
    if let Some(query) = path.strip_prefix("/token?") {
        seen.token_auth.push(headers.get("authorization").cloned());
        let basic_ok = headers.get("authorization").map(String::as_str) == Some("Basic dTpw");
        let query_ok = query.contains("scope=repository:app:pull") && query.contains("service=fake");
        return if basic_ok && query_ok {
            respond(stream, "200 OK", &[], br#"{"token":"t0k"}"#)
        } else {
            respond(stream, "401 Unauthorized", &[], b"{}")
        };
    }
    if headers.get("authorization").map(String::as_str) != Some("Bearer t0k") {
        seen.unauthorized += 1;
        let challenge =
            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:app:pull""#);
        return respond(stream, "401 Unauthorized", &[("WWW-Authenticate", challenge)], b"{}");
    }
    if let Some(r) = path.strip_prefix("/v2/app/manifests/") {
        return match manifests.get(r) {
            Some((mt, data)) => respond(stream, "200 OK", &[("Content-Type", mt.clone())], data),
            None => respond(stream, "404 Not Found", &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
        };
    }
    let Some(data) = path.strip_prefix("/v2/app/blobs/").and_then(|d| blobs.get(d)) else {
        return respond(stream, "404 Not Found", &[], b"{}");
    };
    let digest = path.rsplit('/').next().unwrap_or_default().to_string();
    *seen.blob_gets.entry(digest.clone()).or_default() += 1;
    match headers.get("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')) {
        Some(from) => {
            seen.ranges.push((digest, from.to_string()));
            let from: usize = from.parse().expect("range start");
            let range = format!("bytes {from}-{}/{}", data.len() - 1, data.len());
            respond(stream, "206 Partial Content", &[("Content-Range", range)], &data[from..])
        }
        None => respond(stream, "200 OK", &[], data),
    }
}

#[test]
fn token_auth_index_and_resumed_download_against_an_in_memory_registry() {
    let (tmp, store) = store();
    let (_layout, w) = busybox_image(tmp.path());
    let blobs: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json".to_string();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": oci_manifest, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": oci_manifest, "digest": w.manifest.to_string(), "size": w.manifest_bytes.len(),
             "platform": {"os": "linux", "architecture": layerstore::host_arch()}},
        ],
    }))
    .expect("index json");
    let mut manifests = BTreeMap::new();
    manifests.insert("latest".to_string(), ("application/vnd.oci.image.index.v1+json".to_string(), index));
    manifests.insert(w.manifest.to_string(), (oci_manifest.clone(), w.manifest_bytes.clone()));
    let fake = FakeRegistry::start(manifests, blobs);

    // Half of the big layer is already on disk, as an interrupted pull leaves it.
    let big = &w.layers[1];
    let half = w.blobs[big].len() / 2;
    let partial = store.root().join("ingest").join(format!("pull-sha256-{}.partial", big.hex()));
    std::fs::write(&partial, &w.blobs[big][..half]).expect("write partial");
    assert_fsck_clean(&store);

    let reference = format!("127.0.0.1:{}/app:latest", fake.port);
    let no_files = PullOptions { credential_sources: Some(Default::default()), ..PullOptions::default() };
    let anonymous = store.pull(&reference, &no_files, &NoProgress).expect_err("pulled without a token");
    assert!(anonymous.to_string().contains("--user"), "{anonymous}");

    // The credentials come from an auth file, as `docker login` writes it, when --user gives none.
    let auth_file = tmp.path().join("auth.json");
    std::fs::write(&auth_file, format!(r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "dTpw"}}}}}}"#, fake.port))
        .expect("auth file");
    let sources = layerstore::credentials::CredentialSources { files: vec![auth_file], helper_path: None };
    let opts = PullOptions { credential_sources: Some(sources), ..PullOptions::default() };
    let pulled = store.pull(&reference, &opts, &NoProgress).expect("pull with token");
    let opts = PullOptions { credentials: Some(("u".into(), "p".into())), ..PullOptions::default() };
    assert_eq!(pulled.record.manifest, w.manifest, "the index did not resolve to linux/{}", layerstore::host_arch());
    assert_eq!(pulled.record.layers, w.layers);
    assert_eq!(pulled.blobs_fetched, 3);
    let total: usize = [&w.config, &w.layers[0], &w.layers[1]].iter().map(|d| w.blobs[*d].len()).sum();
    assert_eq!(pulled.bytes_fetched as usize, total - half, "the partial layer was downloaded again");
    let seen = fake.seen.lock().expect("seen");
    assert_eq!(seen.ranges, vec![(big.to_string(), half.to_string())]);
    assert!(seen.token_auth.contains(&Some("Basic dTpw".into())));
    assert!(!partial.exists());
    drop(seen);
    assert!(store.snapshot_path(&pulled.record.chain[1]).join("fs/app/data").exists());
    assert_fsck_clean(&store);

    // A digest reference whose manifest the registry lacks is one error naming it.
    let missing = format!("127.0.0.1:{}/app@sha256:{}", fake.port, "1".repeat(64));
    let err = store.pull(&missing, &opts, &NoProgress).expect_err("missing digest pulled");
    assert!(err.to_string().contains(&missing) && err.to_string().contains("HTTP 404"), "{err}");
}

/// A hostile registry: the manifest and config as they should be, and a layer blob whose body
/// never ends (no length, then zeros until the client hangs up) or ends short. The pull stops
/// at the descriptor's size with one error naming the layer and stores nothing; of the endless
/// body not a byte is kept (the other downloads are, for the next pull).
#[test]
fn a_registry_sending_more_or_less_than_the_descriptor_is_cut_off_and_nothing_kept() {
    let (tmp, store) = store();
    let (_layout, w) = busybox_image(tmp.path());
    for endless in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let blobs: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
        let (manifest, layer) = (w.manifest_bytes.clone(), w.layers[1].to_string());
        let served_layer = layer.clone();
        let server = std::thread::spawn(move || {
            let layer = served_layer;
            let mut sent = 0u64;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok((path, _)) = read_request(&stream) else { continue };
                if path == "/quit" {
                    return sent;
                }
                if path.contains("/manifests/") {
                    let ct = "application/vnd.oci.image.manifest.v1+json".to_string();
                    let _ = respond(stream, "200 OK", &[("Content-Type", ct)], &manifest);
                } else if path.ends_with(&layer) {
                    let data = &blobs[&layer];
                    if endless {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                        let chunk = vec![0u8; 64 << 10];
                        while stream.write_all(&chunk).is_ok() {
                            sent += chunk.len() as u64;
                        }
                    } else {
                        let _ = respond(stream, "200 OK", &[], &data[..data.len() / 2]);
                    }
                } else if let Some(data) = path.rsplit('/').next().and_then(|d| blobs.get(d)) {
                    let _ = respond(stream, "200 OK", &[], data);
                } else {
                    let _ = respond(stream, "200 OK", &[], b"{}");
                }
            }
            sent
        });
        let reference = format!("127.0.0.1:{port}/app:latest");
        let err = store.pull(&reference, &PullOptions::default(), &NoProgress).expect_err("hostile blob pulled");
        let mut quit = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        quit.write_all(b"GET /quit HTTP/1.1\r\n\r\n").expect("quit");
        let msg = err.to_string();
        assert!(msg.contains(&layer), "{msg}");
        if endless {
            assert!(msg.contains("sent more than"), "{msg}");
            let sent = server.join().expect("server");
            // cut off at the first read past the size, not after the whole stream
            assert!(sent < 64 << 20, "the client read {sent} bytes of an endless body");
        } else {
            assert!(msg.contains("ended after"), "{msg}");
            server.join().expect("server");
        }
        // nothing stored; downloads kept for the next pull to resume or reuse (verified when
        // committed), but none of the endless body
        let left: Vec<_> =
            contents(&store).into_iter().filter(|p| !p.to_string_lossy().ends_with(".partial")).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        if endless {
            let hex = layer.trim_start_matches("sha256:").to_string();
            let kept = contents(&store);
            assert!(!kept.iter().any(|p| p.to_string_lossy().contains(&hex)), "the endless body was kept: {kept:?}");
        }
    }
    assert_fsck_clean(&store);
}

/// Two pulls of one image at once download each blob once (the second waits on the blob's lease
/// and finds it downloaded), and both record the image.
#[test]
fn two_concurrent_pulls_of_one_image_download_each_blob_once() {
    let (tmp, store) = store();
    let (_layout, w) = busybox_image(tmp.path());
    let blobs: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
    let mut manifests = BTreeMap::new();
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json".to_string();
    manifests.insert("latest".to_string(), (oci_manifest, w.manifest_bytes.clone()));
    let fake = FakeRegistry::start(manifests, blobs);
    let reference = format!("127.0.0.1:{}/app:latest", fake.port);
    let opts = PullOptions { credentials: Some(("u".into(), "p".into())), ..PullOptions::default() };
    let reports: Vec<_> = std::thread::scope(|s| {
        let pulls: Vec<_> = (0..2).map(|_| s.spawn(|| store.pull(&reference, &opts, &NoProgress))).collect();
        pulls.into_iter().map(|p| p.join().expect("pull thread").expect("pull")).collect()
    });
    assert_eq!(reports[0].record.manifest, w.manifest);
    assert_eq!(reports[1].record.manifest, w.manifest);
    let seen = fake.seen.lock().expect("seen");
    for d in [&w.config, &w.layers[0], &w.layers[1]] {
        assert_eq!(
            seen.blob_gets.get(&d.to_string()).copied(),
            Some(1),
            "{d} fetched {:?} times",
            seen.blob_gets.get(&d.to_string())
        );
    }
    assert_eq!(
        reports[0].blobs_fetched + reports[1].blobs_fetched,
        3,
        "{} + {}",
        reports[0].blobs_fetched,
        reports[1].blobs_fetched
    );
    drop(seen);
    assert_fsck_clean(&store);
    let leftovers: Vec<_> = fs_names(&store.root().join("ingest"));
    assert!(leftovers.iter().all(|n| n.ends_with(".lock") || n.ends_with(".lease")), "{leftovers:?}");
    store.gc().expect("gc");
    let leftovers: Vec<_> = fs_names(&store.root().join("ingest"));
    assert!(leftovers.iter().all(|n| n.ends_with(".lock")), "gc left the leases of stored blobs: {leftovers:?}");
}

fn fs_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// A pull holds the store lock only to commit: while its download hangs, an import of another
/// image goes through, and a `gc` does not take the download away.
#[test]
fn a_pull_does_not_block_the_store_while_it_downloads() {
    let (tmp, store) = store();
    let (_layout, w) = busybox_image(tmp.path());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let blobs: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
    let (manifest, slow) = (w.manifest_bytes.clone(), w.layers[1].to_string());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok((path, _)) = read_request(&stream) else { continue };
            if path == "/quit" {
                return;
            }
            if path.contains("/manifests/") {
                let ct = "application/vnd.oci.image.manifest.v1+json".to_string();
                let _ = respond(stream, "200 OK", &[("Content-Type", ct)], &manifest);
            } else if let Some(data) = path.rsplit('/').next().and_then(|d| blobs.get(d)) {
                if path.ends_with(&slow) {
                    let _ = started_tx.send(());
                    let _ = gate.recv();
                }
                let _ = respond(stream, "200 OK", &[], data);
            } else {
                let _ = respond(stream, "200 OK", &[], b"{}");
            }
        }
    });
    let reference = format!("127.0.0.1:{port}/app:latest");
    std::thread::scope(|s| {
        let pull = s.spawn(|| store.pull(&reference, &PullOptions::default(), &NoProgress));
        started.recv_timeout(Duration::from_secs(60)).expect("the pull never asked for the slow layer");
        // the download hangs: the store is free meanwhile
        let other = tmp.path().join("other");
        Image::new(vec![(Layer::new().file("other", b"other").tar(), Comp::Gzip)]).write_layout(&other, "other");
        let t = Instant::now();
        store.import(&other, None).expect("import during the pull");
        store.gc().expect("gc during the pull");
        assert!(t.elapsed() < Duration::from_secs(20), "the import waited {:?}", t.elapsed());
        release.send(()).expect("release");
        let report = pull.join().expect("pull thread").expect("pull");
        assert_eq!(report.record.layers, w.layers);
    });
    let mut quit = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    quit.write_all(b"GET /quit HTTP/1.1\r\n\r\n").expect("quit");
    assert!(store.image("other").is_ok());
    assert_fsck_clean(&store);
}

/// Mirrors configured as containerd configures them (`<dir>/<registry>/hosts.toml`): the image
/// comes from the mirror while the registry itself is down, and a blob the mirror lacks comes
/// from the registry.
#[test]
fn mirrors_from_hosts_toml_are_tried_first_and_fall_back_to_the_registry() {
    let (tmp, store) = store();
    let (_layout, w) = busybox_image(tmp.path());
    let all: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
    let mut manifests = BTreeMap::new();
    manifests.insert(
        "latest".to_string(),
        ("application/vnd.oci.image.manifest.v1+json".to_string(), w.manifest_bytes.clone()),
    );
    let upstream_port = free_port(); // nothing listens there yet
    let mirror = FakeRegistry::start(manifests.clone(), all.clone());
    let hosts = tmp.path().join("certs.d");
    let dir = hosts.join(format!("127.0.0.1:{upstream_port}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://127.0.0.1:{upstream_port}\"\n[host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", mirror.port),
    )
    .expect("hosts.toml");
    let auth = tmp.path().join("auth.json");
    let creds = |ports: &[u16]| {
        let entries: Vec<String> = ports.iter().map(|p| format!(r#""127.0.0.1:{p}": {{"auth": "dTpw"}}"#)).collect();
        std::fs::write(&auth, format!(r#"{{"auths": {{{}}}}}"#, entries.join(","))).expect("auth.json");
    };
    creds(&[mirror.port]);
    let opts = PullOptions {
        hosts_dir: Some(hosts.clone()),
        credential_sources: Some(layerstore::credentials::CredentialSources {
            files: vec![auth.clone()],
            helper_path: None,
        }),
        ..PullOptions::default()
    };
    let reference = format!("127.0.0.1:{upstream_port}/app:latest");
    let pulled = store.pull(&reference, &opts, &NoProgress).expect("pull through the mirror, the registry down");
    assert_eq!(pulled.record.layers, w.layers);
    assert_eq!(mirror.seen.lock().expect("seen").blob_gets.len(), 3);

    // a mirror that lacks the big layer: that one blob comes from the registry
    let (tmp2, store2) = common::store();
    let mut partial = all.clone();
    partial.remove(&w.layers[1].to_string());
    let thin = FakeRegistry::start(manifests.clone(), partial);
    let registry = FakeRegistry::start(manifests, all);
    let dir = hosts.join(format!("127.0.0.1:{}", registry.port));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("hosts.toml"), format!("[host.\"http://127.0.0.1:{}\"]\n", thin.port)).expect("hosts.toml");
    creds(&[thin.port, registry.port]);
    let reference = format!("127.0.0.1:{}/app:latest", registry.port);
    let pulled = store2.pull(&reference, &opts, &NoProgress).expect("pull with a thin mirror");
    assert_eq!(pulled.record.layers, w.layers);
    let from_registry: Vec<String> = registry.seen.lock().expect("seen").blob_gets.keys().cloned().collect();
    assert_eq!(from_registry, vec![w.layers[1].to_string()], "only the missing blob came from the registry");
    drop(tmp2);
}

/// A decompression bomb served by a registry stops at the store's layer limit, like one
/// imported from an archive: one error naming the layer, nothing stored.
#[test]
fn a_bomb_from_a_registry_stops_at_the_layer_limit() {
    let (tmp, store) = store();
    let store = store.with_layer_limits(layerstore::LayerLimits { max_bytes: 1 << 20, max_entries: 1000 });
    let bomb = Layer::new().file("zeros", &vec![0u8; 8 << 20]).tar();
    let w = Image::new(vec![(bomb, Comp::Gzip)]).write_layout(&tmp.path().join("bomb"), "latest");
    let blobs: BTreeMap<String, Vec<u8>> = w.blobs.iter().map(|(d, b)| (d.to_string(), b.clone())).collect();
    let mut manifests = BTreeMap::new();
    manifests.insert(
        "latest".to_string(),
        ("application/vnd.oci.image.manifest.v1+json".to_string(), w.manifest_bytes.clone()),
    );
    let fake = FakeRegistry::start(manifests, blobs);
    let opts = PullOptions { credentials: Some(("u".into(), "p".into())), ..PullOptions::default() };
    let err =
        store.pull(&format!("127.0.0.1:{}/app:latest", fake.port), &opts, &NoProgress).expect_err("a bomb pulled");
    assert!(matches!(&err, Error::LayerLimit { what: "bytes", .. }), "{err}");
    assert!(err.to_string().contains(&w.layers[0].to_string()), "{err}");
    assert!(contents(&store).is_empty(), "left behind: {:?}", contents(&store));
    assert_fsck_clean(&store);
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl in `dir`: (ca, cert, key).
fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is needed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=strata test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// A registry over HTTPS with a certificate from a private CA, reached as a mirror: trusted
/// through the mirror's `ca` in hosts.toml or through `--ca-file`, refused without either (the
/// error names the certificate), and taken unverified with `skip_verify`.
#[test]
fn a_tls_registry_is_trusted_through_its_ca_and_refused_without_it() {
    let (tmp, store) = store();
    let (ca, cert, key) = make_tls(tmp.path());
    let registry = Registry::start_with(Some((&cert, &key)));
    let (layout, w) = busybox_image(tmp.path());
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--format", "oci"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/busybox:latest", registry.host()))
        .output()
        .expect("skopeo is needed");
    assert!(out.status.success(), "skopeo copy over TLS: {}", String::from_utf8_lossy(&out.stderr));
    // the image is asked of a registry that is down; its mirror is the TLS one
    let dead = free_port();
    let hosts = tmp.path().join("certs.d");
    let dir = hosts.join(format!("127.0.0.1:{dead}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let write = |extra: &str| {
        let toml = format!("[host.\"https://{}\"]\n{extra}", registry.host());
        std::fs::write(dir.join("hosts.toml"), toml).expect("hosts.toml");
    };
    let reference = format!("127.0.0.1:{dead}/busybox:latest");
    let opts = PullOptions {
        hosts_dir: Some(hosts.clone()),
        credential_sources: Some(Default::default()),
        ..PullOptions::default()
    };

    write("");
    let err = store.pull(&reference, &opts, &NoProgress).expect_err("pulled from an unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate") || err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
    assert!(contents(&store).is_empty());

    write(&format!("  ca = \"{}\"\n", ca.display()));
    let pulled = store.pull(&reference, &opts, &NoProgress).expect("pull with the mirror's CA");
    assert_eq!(pulled.record.layers, w.layers);

    write("");
    let (_tmp2, store2) = common::store();
    let with_ca_file = PullOptions { ca_files: vec![ca.clone()], ..opts.clone() };
    store2.pull(&reference, &with_ca_file, &NoProgress).expect("pull with --ca-file");

    write("  skip_verify = true\n");
    let (_tmp3, store3) = common::store();
    store3.pull(&reference, &opts, &NoProgress).expect("pull with skip_verify");
}

/// A token service for distribution's token auth, as Docker Hub's works: Basic `u:p` in, a JWT
/// (RS256, signed with openssl by `key`, its certificate `cert` in the `x5c` header) out,
/// granting pull and push on the scope's repository. Returns its port.
fn token_service(cert: &Path, key: &Path) -> u16 {
    use base64::Engine;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let der = Command::new("openssl").args(["x509", "-outform", "der", "-in"]).arg(cert).output().expect("openssl");
    let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
    let key = key.to_path_buf();
    std::thread::spawn(move || {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let Ok((path, headers)) = read_request(&stream) else { continue };
            if headers.get("authorization").map(String::as_str) != Some("Basic dTpw") {
                let _ = respond(stream, "401 Unauthorized", &[], b"{}");
                continue;
            }
            let scope =
                path.split(['?', '&']).find_map(|p| p.strip_prefix("scope=")).unwrap_or_default().replace("%3A", ":");
            let repo = scope.split(':').nth(1).unwrap_or_default().to_string();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
            let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
            let claims = json!({"iss": "strata-test", "sub": "u", "aud": "strata-registry", "exp": now + 600,
                "nbf": now - 60, "iat": now - 60, "jti": format!("t{n}"),
                "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]});
            let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
            let mut sign = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("openssl");
            sign.stdin.take().expect("stdin").write_all(signing_input.as_bytes()).expect("sign input");
            let signature = sign.wait_with_output().expect("openssl dgst").stdout;
            let token = format!("{signing_input}.{}", url.encode(signature));
            let body = json!({"token": token, "access_token": token}).to_string();
            let _ = respond(stream, "200 OK", &[("Content-Type", "application/json".to_string())], body.as_bytes());
        }
    });
    port
}

/// Debian's docker-registry with distribution's token auth (its Bearer challenge, tokens from a
/// token service checked against a CA): a pull with the user's credentials gets a token and
/// the image; without them it is refused with a hint to give --user.
#[test]
fn a_real_registry_with_bearer_token_auth() {
    let (tmp, store) = store();
    let (ca, cert, key) = make_tls(tmp.path());
    let tokens = token_service(&cert, &key);
    let registry = Registry::start_full(None, Some((&format!("http://127.0.0.1:{tokens}/token"), &ca)));
    let (layout, w) = busybox_image(tmp.path());
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "u:p",
            "--format",
            "oci",
        ])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/busybox:latest", registry.host()))
        .output()
        .expect("skopeo is needed");
    assert!(out.status.success(), "skopeo copy with a token: {}", String::from_utf8_lossy(&out.stderr));
    let reference = format!("{}/busybox:latest", registry.host());
    let anonymous = PullOptions { credential_sources: Some(Default::default()), ..PullOptions::default() };
    let err = store.pull(&reference, &anonymous, &NoProgress).expect_err("pulled without credentials");
    assert!(err.to_string().contains("--user"), "{err}");
    assert!(contents(&store).is_empty());
    let opts = PullOptions { credentials: Some(("u".into(), "p".into())), ..anonymous };
    let pulled = store.pull(&reference, &opts, &NoProgress).expect("pull with a token");
    assert_eq!(pulled.record.layers, w.layers);
    assert_fsck_clean(&store);
}
