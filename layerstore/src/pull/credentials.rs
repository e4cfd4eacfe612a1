//! Registry credentials when the command line gives none: the auth files docker and the
//! containers tools (podman, skopeo, buildah) write, and the credential helpers they name.
//!
//! Files, first match wins: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`). In each, `credHelpers[registry]`
//! or else `credsStore` names a helper `docker-credential-<name>`, run as `get` with the server
//! on its stdin; otherwise `auths[registry].auth` is `base64(user:password)`. Keys may carry a
//! scheme and a path (`https://index.docker.io/v1/`); Docker Hub answers to all its names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use super::reference::{DOCKER_HUB, is_docker_hub};
use crate::{Error, Result};

/// Where to look, from the environment (tests give their own).
#[derive(Debug, Clone, Default)]
pub struct CredentialSources {
    /// Auth files, in order.
    pub files: Vec<PathBuf>,
    /// The `PATH` searched for `docker-credential-*` helpers (`None`: the process's).
    pub helper_path: Option<std::ffi::OsString>,
}

impl CredentialSources {
    /// The files docker and the containers tools read, from the process environment.
    pub fn from_env() -> CredentialSources {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut files = Vec::new();
        files.extend(var("REGISTRY_AUTH_FILE"));
        files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
        match var("DOCKER_CONFIG") {
            Some(d) => files.push(d.join("config.json")),
            None => files.extend(var("HOME").map(|h| h.join(".docker/config.json"))),
        }
        CredentialSources { files, helper_path: None }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The registry a key of an auth file names: no scheme, no path, Docker Hub's canonical host.
fn key_host(key: &str) -> &str {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    if is_docker_hub(host) { DOCKER_HUB } else { host }
}

/// The server name a helper is asked about: Docker Hub's legacy index URL, else the host.
fn helper_server(registry: &str) -> String {
    if registry == DOCKER_HUB { "https://index.docker.io/v1/".to_string() } else { registry.to_string() }
}

fn bad(file: &Path, reason: String) -> Error {
    Error::BadField { what: file.display().to_string(), field: "auths".into(), reason }
}

/// The user name and password for `registry`, if an auth file or helper has them.
pub fn lookup(registry: &str, sources: &CredentialSources) -> Result<Option<(String, String)>> {
    for file in &sources.files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", file)(e)),
        };
        let parsed: AuthFile = serde_json::from_slice(&bytes).map_err(Error::json(file.display().to_string()))?;
        let helper = parsed
            .cred_helpers
            .iter()
            .find(|(k, _)| key_host(k) == registry)
            .map(|(_, h)| h.clone())
            .or(parsed.creds_store.clone());
        if let Some(helper) = helper
            && let Some(found) = run_helper(&helper, registry, sources)?
        {
            return Ok(Some(found));
        }
        let Some(entry) = parsed.auths.iter().find(|(k, _)| key_host(k) == registry).map(|(_, e)| e) else {
            continue;
        };
        if entry.identity_token.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(bad(
                file,
                format!("{registry}: an identity token (OAuth refresh token) is not supported; log in with a password"),
            ));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(file, format!("{registry}: auth is not base64: {e}")))?;
            let text = String::from_utf8(decoded).map_err(|_| bad(file, format!("{registry}: auth is not UTF-8")))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| bad(file, format!("{registry}: auth is not base64(user:password)")))?;
            return Ok(Some((user.to_string(), pass.to_string())));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some((u.clone(), p.clone())));
        }
    }
    Ok(None)
}

/// Asks `docker-credential-<helper>` for `registry`; `None` when it has nothing for it.
fn run_helper(helper: &str, registry: &str, sources: &CredentialSources) -> Result<Option<(String, String)>> {
    if helper.is_empty() || !helper.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(Error::BadField {
            what: "credential helper".into(),
            field: helper.into(),
            reason: "not a helper name".into(),
        });
    }
    let program = format!("docker-credential-{helper}");
    let mut cmd = Command::new(&program);
    if let Some(path) = &sources.helper_path {
        cmd.env("PATH", path);
    }
    let helper_error = |reason: String| Error::BadField {
        what: format!("credential helper {program}"),
        field: registry.into(),
        reason,
    };
    let mut child = cmd
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| helper_error(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| helper_error(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        // the helper protocol's answer for a server it has no credentials for
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(helper_error(format!("{}: {}", out.status, said.trim())));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout).map_err(|e| helper_error(format!("bad answer: {e}")))?;
    if a.username == "<token>" {
        return Err(helper_error("an identity token (OAuth refresh token) is not supported".into()));
    }
    Ok(Some((a.username, a.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sources(dir: &Path, files: &[&str]) -> CredentialSources {
        CredentialSources {
            files: files.iter().map(|f| dir.join(f)).collect(),
            helper_path: Some(dir.join("bin").into_os_string()),
        }
    }

    #[test]
    fn auth_files_and_helpers_give_credentials_by_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            d.join("auth.json"),
            serde_json::json!({"auths": {
                "registry.lan:5000": {"auth": b64("alice:s3cret")},
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
                "broken.lan": {"auth": "%%%"}
            }, "credHelpers": {"helped.lan": "fake"}})
            .to_string(),
        )
        .expect("auth.json");
        std::fs::write(d.join("docker.json"), r#"{"auths": {"other.lan": {"username": "bob", "password": "pw"}}}"#)
            .expect("docker.json");
        std::fs::create_dir(d.join("bin")).expect("bin");
        let helper = d.join("bin/docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 2\n\
             if [ \"$server\" = helped.lan ]; then echo '{\"ServerURL\":\"helped.lan\",\"Username\":\"carol\",\"Secret\":\"tok\"}'; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .expect("helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = sources(d, &["missing.json", "auth.json", "docker.json"]);
        let got = |r: &str| lookup(r, &s).expect(r);
        assert_eq!(got("registry.lan:5000"), Some(("alice".into(), "s3cret".into())));
        assert_eq!(got(DOCKER_HUB), Some(("hubuser".into(), "hubpass".into())));
        assert_eq!(got("other.lan"), Some(("bob".into(), "pw".into())), "the second file");
        assert_eq!(got("helped.lan"), Some(("carol".into(), "tok".into())), "the helper");
        assert_eq!(got("unknown.lan"), None);
        let err = lookup("broken.lan", &s).expect_err("bad base64").to_string();
        assert!(err.contains("auth.json") && err.contains("broken.lan"), "{err}");

        // credsStore covers every registry; a helper without credentials falls back to auths
        std::fs::write(
            d.join("store.json"),
            r#"{"credsStore": "fake", "auths": {"plain.lan": {"username": "dan", "password": "x"}}}"#,
        )
        .expect("store.json");
        let s = sources(d, &["store.json"]);
        assert_eq!(lookup("helped.lan", &s).expect("helped"), Some(("carol".into(), "tok".into())));
        assert_eq!(lookup("plain.lan", &s).expect("plain"), Some(("dan".into(), "x".into())));
    }
}
