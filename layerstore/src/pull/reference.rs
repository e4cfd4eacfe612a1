//! Image references: `[registry/]repository[:tag][@digest]`, as docker spells them.

use std::fmt;

use crate::{Digest, Error, Result};

/// Docker Hub's registry, for references that name no registry.
pub(crate) const DOCKER_HUB: &str = "registry-1.docker.io";

/// The names Docker Hub goes by in references and in auth files.
pub(crate) fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com")
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// The repository path (`library/busybox`, `team/app`).
    pub repository: String,
    /// The tag; `latest` when the reference gives neither a tag nor a digest.
    pub tag: Option<String>,
    /// The manifest digest, which wins over the tag.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `reference`. The first component is the registry when it holds a `.` or a `:` or is
    /// `localhost`; otherwise the registry is Docker Hub (and a one-component repository is `library/`'s).
    pub fn parse(reference: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::BadReference { reference: reference.into(), reason: reason.into() };
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|_| bad("the digest is not sha256:<hex>"))?)),
            None => (reference, None),
        };
        let (registry, path) = match rest.split_once('/') {
            // `docker.io/busybox` is Docker Hub's, as docker reads it
            Some((first, path)) if is_docker_hub(first) => (DOCKER_HUB.to_string(), path),
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path),
            _ => (DOCKER_HUB.to_string(), rest),
        };
        // A tag follows the last `:` after the last `/` (a registry port is not a tag).
        let last = path.rsplit('/').next().unwrap_or(path);
        let (repository, tag) = match last.rsplit_once(':') {
            Some((_, tag)) => (&path[..path.len() - tag.len() - 1], Some(tag.to_string())),
            None => (path, None),
        };
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(bad("the repository is empty"));
        }
        let repo_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b);
        if !repository.bytes().all(repo_ok) {
            return Err(bad("a repository is lowercase letters, digits and . _ - /"));
        }
        if let Some(t) = &tag {
            let tag_ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
            if t.is_empty() || t.len() > 128 || !t.bytes().all(tag_ok) {
                return Err(bad("a tag is 1-128 of [A-Za-z0-9_.-]"));
            }
        }
        if registry.is_empty() {
            return Err(bad("the registry is empty"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        let tag = if tag.is_none() && digest.is_none() { Some("latest".into()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// What `/v2/<repository>/manifests/<this>` asks for: the digest if given, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Whether plain HTTP is allowed without `--insecure`: only a registry on this host.
    pub fn is_local(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        host == "localhost" || host == "[::1]" || host.starts_with("127.")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_split_into_registry_repository_tag_and_digest() {
        let r = Reference::parse("127.0.0.1:5000/busybox:latest").expect("parse");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "busybox", Some("latest"))
        );
        assert!(r.is_local());
        let r = Reference::parse(&format!("localhost:5000/team/app@sha256:{HEX}")).expect("parse");
        assert_eq!((r.repository.as_str(), r.tag.as_deref()), ("team/app", None));
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        let r = Reference::parse("localhost/app").expect("parse");
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", Some("latest")));
        let r = Reference::parse("busybox").expect("parse");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), (DOCKER_HUB, "library/busybox"));
        assert!(!r.is_local());
        for hub in ["docker.io/busybox", "index.docker.io/library/busybox:latest", "busybox:latest"] {
            let r = Reference::parse(hub).expect("parse");
            assert_eq!(r.to_string(), "registry-1.docker.io/library/busybox:latest", "{hub}");
        }
        let r = Reference::parse("docker.io/team/app").expect("parse");
        assert_eq!(r.to_string(), "registry-1.docker.io/team/app:latest");
        let r = Reference::parse("ghcr.io/o/app:v1.2").expect("parse");
        assert_eq!(r.to_string(), "ghcr.io/o/app:v1.2");
        assert!(!Reference::parse("example.com:443/app").expect("parse").is_local());
    }

    #[test]
    fn bad_references_are_refused_with_the_reference_named() {
        for bad in ["", "127.0.0.1:5000/", "host.io/App", "host.io/a//b", "host.io/a:", "a@sha256:xyz", "a:b c"] {
            let err = Reference::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
