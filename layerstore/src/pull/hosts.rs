//! Registry mirrors, configured as containerd configures them: `<dir>/<registry>/hosts.toml`
//! (`docker.io` for Docker Hub; `<dir>/_default/hosts.toml` for any registry without its own),
//! with `dir` `/etc/containerd/certs.d` unless given.
//!
//! ```toml
//! server = "https://registry-1.docker.io"      # the upstream (default: the registry itself)
//! [host."https://mirror.lan:5000"]
//!   capabilities = ["pull", "resolve"]         # resolve: tags to digests; pull: blobs
//!   ca = "/etc/certs/mirror.pem"               # or a list
//!   skip_verify = false
//! ```
//!
//! Hosts are tried in the file's order, the upstream last. A host setting strata does not
//! implement (`header`, `client`, `override_path`, a path in a host's URL) is refused by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::reference::DOCKER_HUB;
use crate::{Error, Result};

/// containerd's default hosts directory.
pub const DEFAULT_DIR: &str = "/etc/containerd/certs.d";

/// One host to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `scheme://host[:port]`.
    pub url: String,
    /// Blobs may be fetched from it.
    pub pull: bool,
    /// Manifests (tags) may be resolved on it.
    pub resolve: bool,
    /// Extra CA certificates for it.
    pub ca: Vec<PathBuf>,
    /// Its certificate is not verified.
    pub skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(self) -> Vec<PathBuf> {
        match self {
            OneOrMany::One(s) => vec![PathBuf::from(s)],
            OneOrMany::Many(v) => v.into_iter().map(PathBuf::from).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSettings {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    host: toml::Table,
}

/// The directory name containerd gives `registry`.
fn dir_name(registry: &str) -> &str {
    if registry == DOCKER_HUB { "docker.io" } else { registry }
}

/// `scheme://host[:port]` of `url`, refusing what strata cannot honour.
fn base_url(url: &str, file: &Path) -> Result<String> {
    let bad =
        |reason: &str| Error::BadField { what: file.display().to_string(), field: url.into(), reason: reason.into() };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("a host is scheme://host[:port]"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !path.is_empty() && path != "v2" && path != "v2/" {
        return Err(bad("a path in a host's URL (containerd's override_path) is not supported"));
    }
    Ok(format!("{scheme}://{host}"))
}

fn capabilities(caps: Option<Vec<String>>, file: &Path, url: &str) -> Result<(bool, bool)> {
    let Some(caps) = caps else { return Ok((true, true)) };
    let mut out = (false, false);
    for c in &caps {
        match c.as_str() {
            "pull" => out.0 = true,
            "resolve" => out.1 = true,
            // pushing is not something strata does; the host is still one to pull from
            "push" => {}
            other => {
                return Err(Error::BadField {
                    what: file.display().to_string(),
                    field: format!("host.{url:?}.capabilities"),
                    reason: format!("unknown capability {other:?} (pull, resolve, push)"),
                });
            }
        }
    }
    Ok(out)
}

/// The hosts to pull `registry`'s images from, mirrors first; `upstream` is the registry's own
/// URL when no `server` overrides it.
pub fn hosts_for(registry: &str, dir: &Path, upstream: &str) -> Result<Vec<Host>> {
    let own = dir.join(dir_name(registry)).join("hosts.toml");
    let file = if own.is_file() { own } else { dir.join("_default").join("hosts.toml") };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![Host { url: upstream.into(), pull: true, resolve: true, ca: vec![], skip_verify: false }]);
        }
        Err(e) => return Err(Error::io("read", &file)(e)),
    };
    parse(&text, &file, upstream)
}

/// The hosts a `hosts.toml` holding `text` gives (`file` names it in errors), mirrors first.
pub fn parse(text: &str, file: &Path, upstream: &str) -> Result<Vec<Host>> {
    let file = file.to_path_buf();
    let parsed: HostsFile = toml::from_str(text).map_err(|e| Error::BadField {
        what: file.display().to_string(),
        field: "hosts.toml".into(),
        reason: e.to_string().trim().replace('\n', " "),
    })?;
    let mut hosts = Vec::new();
    for (url, value) in parsed.host {
        let settings = HostSettings::deserialize(value).map_err(|e| Error::BadField {
            what: file.display().to_string(),
            field: format!("host.{url:?}"),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        let (pull, resolve) = capabilities(settings.capabilities, &file, &url)?;
        hosts.push(Host {
            url: base_url(&url, &file)?,
            pull,
            resolve,
            ca: settings.ca.map(OneOrMany::paths).unwrap_or_default(),
            skip_verify: settings.skip_verify.unwrap_or(false),
        });
    }
    let server = match &parsed.server {
        Some(s) => base_url(s, &file)?,
        None => upstream.to_string(),
    };
    let (pull, resolve) = capabilities(parsed.capabilities, &file, &server)?;
    hosts.push(Host {
        url: server,
        pull,
        resolve,
        ca: parsed.ca.map(OneOrMany::paths).unwrap_or_default(),
        skip_verify: parsed.skip_verify.unwrap_or(false),
    });
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_gives_mirrors_in_order_then_the_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("docker.io")).expect("mkdir");
        std::fs::write(
            d.join("docker.io/hosts.toml"),
            r#"server = "https://registry-1.docker.io"
[host."https://z-mirror.lan:5000"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/mirror.pem"
[host."http://a-mirror.lan/v2"]
  capabilities = ["pull"]
  skip_verify = true
"#,
        )
        .expect("write");
        let hosts = hosts_for(DOCKER_HUB, d, "https://registry-1.docker.io").expect("hosts");
        let urls: Vec<&str> = hosts.iter().map(|h| h.url.as_str()).collect();
        assert_eq!(urls, ["https://z-mirror.lan:5000", "http://a-mirror.lan", "https://registry-1.docker.io"]);
        assert_eq!((hosts[0].pull, hosts[0].resolve), (true, true));
        assert_eq!((hosts[1].pull, hosts[1].resolve, hosts[1].skip_verify), (true, false, true));
        assert_eq!(hosts[0].ca, [PathBuf::from("/etc/certs/mirror.pem")]);
        // no file: the upstream alone
        assert_eq!(hosts_for("other.lan", d, "https://other.lan").expect("none").len(), 1);
        // _default serves every registry without its own
        std::fs::create_dir_all(d.join("_default")).expect("mkdir");
        std::fs::write(d.join("_default/hosts.toml"), "[host.\"https://all.lan\"]\n").expect("write");
        let hosts = hosts_for("other.lan", d, "https://other.lan").expect("default");
        assert_eq!(hosts[0].url, "https://all.lan");
        assert_eq!(hosts[1].url, "https://other.lan");
    }

    #[test]
    fn what_strata_does_not_implement_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("reg.lan")).expect("mkdir");
        for (toml, word) in [
            ("[host.\"https://m.lan\"]\nheader = { x = \"y\" }\n", "header"),
            ("[host.\"https://m.lan\"]\noverride_path = true\n", "override_path"),
            ("[host.\"https://m.lan/prefix/v2\"]\n", "override_path"),
            ("[host.\"https://m.lan\"]\ncapabilities = [\"fetch\"]\n", "fetch"),
            ("server = \"ftp://x\"\n", "scheme"),
            ("[[host]]\n", "hosts.toml"),
        ] {
            std::fs::write(d.join("reg.lan/hosts.toml"), toml).expect("write");
            let e = hosts_for("reg.lan", d, "https://reg.lan").expect_err(toml).to_string();
            assert!(e.contains(word) && e.contains("hosts.toml"), "{toml}: {e}");
        }
    }
}
