//! Debian's `docker-registry`, started on 127.0.0.1 with a private config and storage, for the
//! pull tests of the layer store and the CLI's (`shim/tests/faults.rs` includes this file).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `docker-registry` on 127.0.0.1 with its storage in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `tls` (certificate and key PEM files), the registry serves HTTPS.
    pub fn start_with(tls: Option<(&Path, &Path)>) -> Registry {
        Registry::start_full(tls, None)
    }

    /// With `token` (realm URL and the CA PEM that signed the token issuer's certificate), the
    /// registry demands Bearer tokens from that realm, as distribution's token auth does.
    pub fn start_full(tls: Option<(&Path, &Path)>, token: Option<(&str, &Path)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            data.display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        if let Some((realm, ca)) = token {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: strata-registry\n    issuer: strata-test\n    \
                 rootcertbundle: {}\n",
                ca.display()
            ));
        }
        std::fs::write(&config, yaml).expect("write registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's docker-registry package) is needed");
        let registry = Registry { child, port, data, _dir: dir };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "docker-registry did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes an OCI layout's `tag` as `name` with skopeo (`format`: `oci` or `v2s2`).
    pub fn push(&self, layout: &Path, tag: &str, name: &str, format: &str) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--format", format])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .expect("skopeo is needed");
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The registry's file for a blob.
    pub fn blob_file(&self, digest: &layerstore::Digest) -> PathBuf {
        let hex = digest.hex();
        self.data.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
