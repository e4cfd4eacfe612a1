//! A blocking client for the distribution v2 API: GET with an `Accept` and an optional `Range`, and the
//! auth dance — on a 401, the `WWW-Authenticate` challenge is answered (Bearer: a token from the realm,
//! anonymous or with the user's basic credentials; Basic: the credentials themselves) and the request
//! is made once more. One token serves every thread of a pull.

use std::sync::Mutex;
use std::time::Duration;

use ureq::Agent;
use ureq::http::Response;

use crate::pull::Reference;
use crate::{Error, Result};

/// A registry session for one repository.
pub(crate) struct Client {
    agent: Agent,
    /// `http://host:port` or `https://host`.
    base: String,
    reference: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// The `Authorization` header value earned by the last challenge.
    auth: Mutex<Option<String>>,
}

/// A response with its body still to read.
pub(crate) type Reply = Response<ureq::Body>;

impl Client {
    /// A session with the registry at `base` (`scheme://host[:port]`: the reference's own, or a
    /// mirror), trusting `ca_files` besides the system's roots.
    pub(crate) fn new(
        reference: &Reference,
        base: &str,
        credentials: Option<(String, String)>,
        ca_files: &[std::path::PathBuf],
        skip_verify: bool,
    ) -> Result<Client> {
        let tls =
            ureq::tls::TlsConfig::builder().root_certs(root_certs(ca_files)?).disable_verification(skip_verify).build();
        let config = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: config.new_agent(),
            base: base.to_string(),
            reference: reference.to_string(),
            repository: reference.repository.clone(),
            credentials,
            auth: Mutex::new(None),
        })
    }

    /// The URL of `/v2/<repository>/<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// An [`Error::Registry`] for `url`.
    pub(crate) fn error(&self, url: &str, status: Option<u16>, reason: impl Into<String>) -> Error {
        Error::Registry { reference: self.reference.clone(), url: format!("GET {url}"), status, reason: reason.into() }
    }

    /// GETs `url`, answering one auth challenge. Any status comes back; the caller judges it.
    pub(crate) fn get(&self, url: &str, accept: Option<&str>, range_from: Option<u64>) -> Result<Reply> {
        let mut challenged = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range_from {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(auth) = self.auth.lock().map(|a| a.clone()).unwrap_or_default() {
                req = req.header("Authorization", auth);
            }
            let reply = req.call().map_err(|e| self.error(url, None, e.to_string()))?;
            if reply.status().as_u16() != 401 || challenged {
                return Ok(reply);
            }
            challenged = true;
            let challenge = reply
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.error(url, Some(401), "unauthorized, and no WWW-Authenticate challenge"))?
                .to_string();
            let auth = self.answer(url, &challenge)?;
            if let Ok(mut slot) = self.auth.lock() {
                *slot = Some(auth);
            }
        }
    }

    /// The `Authorization` value that answers `challenge`.
    fn answer(&self, url: &str, challenge: &str) -> Result<String> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.credentials.as_ref().map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                self.error(url, Some(401), "the registry wants a user name and password: pass --user USER:PASS")
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.error(url, Some(401), format!("unsupported auth challenge {challenge:?}")));
        }
        let param = |k: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
        let realm = param("realm").ok_or_else(|| self.error(url, Some(401), "Bearer challenge without a realm"))?;
        let scope = param("scope").map_or_else(|| format!("repository:{}:pull", self.repository), str::to_string);
        let mut token_url = format!("{realm}?scope={}", query_escape(&scope));
        if let Some(service) = param("service") {
            token_url.push_str(&format!("&service={}", query_escape(service)));
        }
        let mut req = self.agent.get(&token_url);
        if let Some(b) = &basic {
            req = req.header("Authorization", b);
        }
        let token_error = |status, reason: String| Error::Registry {
            reference: self.reference.clone(),
            url: format!("GET {token_url} (token for {url})"),
            status,
            reason,
        };
        let mut reply = req.call().map_err(|e| token_error(None, e.to_string()))?;
        let status = reply.status().as_u16();
        if status != 200 {
            let hint = if basic.is_some() { "check --user" } else { "the registry may need --user USER:PASS" };
            return Err(token_error(Some(status), format!("token refused; {hint}")));
        }
        let body = reply
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| token_error(None, e.to_string()))?;
        let token = parse_token_reply(&body).map_err(|reason| token_error(Some(status), reason))?;
        Ok(format!("Bearer {token}"))
    }
}

/// The bearer token in a token service's JSON reply: `token`, or OAuth's `access_token`.
/// Untrusted input: the token becomes a header value, so it must be visible ASCII (a JWT or any
/// RFC 6750 token is).
pub fn parse_token_reply(body: &[u8]) -> std::result::Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let t: Token = serde_json::from_slice(body).map_err(|e| format!("bad token JSON: {e}"))?;
    let token = t.token.filter(|t| !t.is_empty()).or(t.access_token).ok_or("no token in reply")?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds characters a header cannot carry".to_string());
    }
    Ok(token)
}

/// Splits a registry's `WWW-Authenticate` challenge, `Bearer realm="...",service="...",scope="..."`,
/// into its scheme and parameters. Untrusted input: never panics, whatever the text.
pub fn parse_challenge(challenge: &str) -> (String, Vec<(String, String)>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        params.push((key.trim().to_string(), value.trim().to_string()));
    }
    (scheme.to_string(), params)
}

/// Percent-encodes a query value (scopes hold `:` and `/`, which are left as they are).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The system's CA bundle: `$SSL_CERT_FILE`, else Debian's, else Red Hat's.
const SYSTEM_BUNDLES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// The roots TLS trusts: the system's bundle and the `extra` PEM files; the bundled web PKI
/// roots when the system has no bundle and no extra file is given.
fn root_certs(extra: &[std::path::PathBuf]) -> Result<ureq::tls::RootCerts> {
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file());
    let mut certs = Vec::new();
    for (file, required) in system.iter().map(|f| (f, false)).chain(extra.iter().map(|f| (f, true))) {
        let pem = std::fs::read(file).map_err(crate::Error::io("read CA certificates", file))?;
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                certs.push(c);
            }
        }
        if required && certs.len() == before {
            return Err(crate::Error::BadField {
                what: file.display().to_string(),
                field: "--ca-file".into(),
                reason: "holds no PEM certificate".into(),
            });
        }
    }
    Ok(if certs.is_empty() { ureq::tls::RootCerts::WebPki } else { ureq::tls::RootCerts::new_with_certs(&certs) })
}

/// Standard base64 with padding, for a Basic `Authorization` header.
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_into_their_parameters() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        let want = [
            ("realm", "https://auth.example/token"),
            ("service", "registry.example"),
            ("scope", "repository:a/b:pull,push"),
        ];
        let got: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        let (scheme, params) = parse_challenge("Basic realm=registry");
        assert_eq!((scheme.as_str(), params[0].1.as_str()), ("Basic", "registry"));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn scopes_keep_colons_and_slashes_in_queries() {
        assert_eq!(query_escape("repository:a/b:pull,push"), "repository:a/b:pull%2Cpush");
    }
}
