//! Runtime options: what containerd passes with `Create`, in either of two messages.
//!
//! - runc's `containerd.runc.v1.Options`, which `ctr run --runc-*` fills, and which containerd
//!   2.x's CRI sends for pods in a user namespace (`IoUid`/`IoGid`);
//! - CRI's `runtimeoptions.v1.Options`, which CRI sends to every runtime type it does not know,
//!   strata's included: a `ConfigPath` naming a TOML file, or the runtime's whole `options`
//!   table as TOML in `ConfigBody` (containerd 1.7 and later).
//!
//! Both come down to the same settings ([`RuntimeOptions`]): the state root, the owner of the
//! stdio pipes, keeping the runtime's session keyring, and a cgroup for the shim. Anything
//! else is refused by name (a systemd cgroup driver, no pivot_root, CRIU): strata never
//! ignores an option it does not implement.
//!
//! The TOML strata reads is flat `key = value` lines (strings, integers, booleans; keys in
//! containerd's Go style, `Root`, or snake case, `root`, any case):
//!
//! ```toml
//! Root = "/run/containerd/strata"    # the state root; the namespace is appended
//! IoUid = 0                          # who owns the processes' stdio pipes
//! IoGid = 0
//! NoNewKeyring = false               # keep the runtime's session keyring
//! ShimCgroup = "/system.slice/strata-shims"   # a cgroup (v2 path) for the shim daemon
//! ```

use super::ttrpc::{RpcResult, status};
use containerd_shim::api::Options;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc::Code;
use std::path::PathBuf;

/// The type URL of CRI's options for a runtime type it does not know.
pub const RUNTIMEOPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// What strata takes from the runtime options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The state root (`Root`), to which the namespace is appended as runc's shim does.
    pub root: Option<PathBuf>,
    /// Who owns the pipes and FIFOs given to the task's processes as stdio (`IoUid`, `IoGid`),
    /// so that a process in a user namespace can reopen them (`/proc/self/fd/1`, `/dev/stdout`).
    pub io_owner: Option<(u32, u32)>,
    /// Keep the runtime's session keyring (`NoNewKeyring`).
    pub no_new_keyring: bool,
    /// A cgroup v2 path (below the mount) the shim daemon moves into (`ShimCgroup`).
    pub shim_cgroup: Option<String>,
    /// The systemd cgroup driver (`SystemdCgroup`): containers' cgroups are transient scopes.
    pub systemd_cgroup: bool,
}

fn invalid(message: impl std::fmt::Display) -> super::ttrpc::RpcError {
    status(Code::INVALID_ARGUMENT, format!("runtime options: {message}"))
}

/// Decodes and checks the options of a `Create` request.
pub fn parse(any: &MessageField<Any>) -> RpcResult<RuntimeOptions> {
    let Some(any) = any.as_ref() else { return Ok(RuntimeOptions::default()) };
    if any.value.is_empty() && any.type_url.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    let url = any.type_url.rsplit('/').next().unwrap_or("");
    match url {
        "containerd.runc.v1.Options" | "runc.v1.Options" => from_runc(&any.value),
        RUNTIMEOPTIONS_TYPE => from_runtimeoptions(&any.value),
        other => Err(invalid(format!("options of type {other:?} are not strata's (runc's or runtimeoptions.v1's)"))),
    }
}

fn from_runc(bytes: &[u8]) -> RpcResult<RuntimeOptions> {
    let o = Options::parse_from_bytes(bytes).map_err(invalid)?;
    let refused = [
        (o.no_pivot_root, "NoPivotRoot: strata always uses pivot_root (chroot can be escaped)"),
        (!o.binary_name.is_empty(), "BinaryName: strata runs the strata binary found beside its shim"),
        (!o.criu_image_path.is_empty() || !o.criu_work_path.is_empty(), "Criu*: strata has no CRIU support"),
    ];
    if let Some((_, why)) = refused.iter().find(|(set, _)| *set) {
        return Err(invalid(why));
    }
    Ok(RuntimeOptions {
        root: (!o.root.is_empty()).then(|| PathBuf::from(&o.root)),
        io_owner: (o.io_uid != 0 || o.io_gid != 0).then_some((o.io_uid, o.io_gid)),
        no_new_keyring: o.no_new_keyring,
        shim_cgroup: (!o.shim_cgroup.is_empty()).then(|| o.shim_cgroup.clone()),
        systemd_cgroup: o.systemd_cgroup,
    })
}

/// The fields of `runtimeoptions.v1.Options`: `type_url` (1), `config_path` (2) and
/// `config_body` (3). containerd-shim-protos has no code for the message; protobuf's wire format
/// is simple enough to read here.
fn decode_runtimeoptions(mut b: &[u8]) -> RpcResult<(String, String, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let malformed = || invalid("a malformed runtimeoptions.v1.Options");
    let (mut type_url, mut path, mut body) = (String::new(), String::new(), Vec::new());
    while !b.is_empty() {
        let key = varint(&mut b).ok_or_else(malformed)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut b).ok_or_else(malformed)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut b).ok_or_else(malformed)?).map_err(|_| malformed())?;
                if len > b.len() {
                    return Err(malformed());
                }
                let (data, rest) = b.split_at(len);
                b = rest;
                match field {
                    1 => type_url = String::from_utf8(data.to_vec()).map_err(|_| malformed())?,
                    2 => path = String::from_utf8(data.to_vec()).map_err(|_| malformed())?,
                    3 => body = data.to_vec(),
                    _ => {}
                }
            }
            1 if b.len() >= 8 => b = &b[8..],
            5 if b.len() >= 4 => b = &b[4..],
            _ => return Err(malformed()),
        }
    }
    Ok((type_url, path, body))
}

fn from_runtimeoptions(bytes: &[u8]) -> RpcResult<RuntimeOptions> {
    let (_, path, body) = decode_runtimeoptions(bytes)?;
    let (text, source) = if !path.is_empty() {
        let text = read_config_file(&path).map_err(|e| invalid(format!("ConfigPath {path}: {e}")))?;
        (text, path)
    } else {
        (String::from_utf8(body).map_err(|_| invalid("ConfigBody is not UTF-8"))?, "ConfigBody".to_string())
    };
    from_toml(&text).map_err(|e| invalid(format!("{source}: {e}")))
}

/// Largest options file read (the TOML is a few lines).
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a `ConfigPath` file: a regular file (opened without blocking, so a FIFO or a device
/// is refused, not waited on) of at most [`MAX_CONFIG_FILE`] bytes, in UTF-8.
fn read_config_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(format!("larger than {MAX_CONFIG_FILE} bytes"));
    }
    Ok(text)
}

/// The check of the fuzz target `shim_options` (replayed on stable by `tests/bad_input.rs`):
/// the first byte picks the options' type URL, the rest is the message. Decoding gives options
/// or an `INVALID_ARGUMENT` error, never a panic. Not part of the shim's API.
#[doc(hidden)]
pub fn check_fuzz_input(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else { return };
    let url = match pick % 4 {
        0 => "type.googleapis.com/containerd.runc.v1.Options",
        1 => "runc.v1.Options",
        2 => RUNTIMEOPTIONS_TYPE,
        _ => "type.googleapis.com/other.v1.Options",
    };
    let mut any = Any::new();
    any.type_url = url.into();
    any.value = value.to_vec();
    if let Err(e) = parse(&MessageField::some(any)) {
        assert_eq!(e.code, Code::INVALID_ARGUMENT, "{e:?}");
    }
}

/// A value of the flat TOML strata reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

fn parse_value(v: &str) -> Option<Value> {
    let v = v.trim();
    if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        // Basic strings: the escapes a path or a cgroup needs.
        return Some(Value::Str(s.replace("\\\\", "\\").replace("\\\"", "\"")));
    }
    if let Some(s) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Some(Value::Str(s.to_string()));
    }
    match v {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => v.replace('_', "").parse().ok().map(Value::Int),
    }
}

/// Reads strata's options from flat TOML (see the module documentation).
fn from_toml(text: &str) -> Result<RuntimeOptions, String> {
    let mut o = RuntimeOptions::default();
    let (mut uid, mut gid) = (None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("line {}", n + 1);
        if line.starts_with('[') {
            return Err(format!("{}: tables are not options strata takes ({line})", at()));
        }
        let (key, value) = line.split_once('=').ok_or_else(|| format!("{}: not `key = value`", at()))?;
        let key = key.trim().trim_matches('"');
        // A value may end with a comment (outside quotes: values here hold no '#').
        let value = match value.split_once(" #") {
            Some((v, _)) => v,
            None => value,
        };
        let value = parse_value(value).ok_or_else(|| format!("{}: {key}: not a string, integer or boolean", at()))?;
        let norm: String = key.chars().filter(|c| *c != '_').collect::<String>().to_ascii_lowercase();
        let int = |v: &Value| match v {
            Value::Int(i) => u32::try_from(*i).map_err(|_| format!("{key}: {i} is not a uid or gid")),
            _ => Err(format!("{key}: expects an integer")),
        };
        match (norm.as_str(), &value) {
            ("root", Value::Str(s)) => o.root = (!s.is_empty()).then(|| PathBuf::from(s)),
            ("iouid", v) => uid = Some(int(v)?),
            ("iogid", v) => gid = Some(int(v)?),
            ("nonewkeyring", Value::Bool(b)) => o.no_new_keyring = *b,
            ("shimcgroup", Value::Str(s)) => o.shim_cgroup = (!s.is_empty()).then(|| s.clone()),
            ("systemdcgroup", Value::Bool(b)) => o.systemd_cgroup = *b,
            ("nopivotroot", Value::Bool(false)) => {}
            ("nopivotroot", _) => return Err(format!("{key}: strata always uses pivot_root")),
            // CRI adds these two to the table it re-encodes.
            ("typeurl" | "configpath", _) => {}
            ("root" | "nonewkeyring" | "shimcgroup" | "systemdcgroup", _) => {
                return Err(format!("{key}: wrong type of value"));
            }
            _ => {
                return Err(format!(
                    "{key} is not an option strata takes (Root, IoUid, IoGid, NoNewKeyring, ShimCgroup, SystemdCgroup)"
                ));
            }
        }
    }
    if uid.is_some() || gid.is_some() {
        o.io_owner = Some((uid.unwrap_or(0), gid.unwrap_or(0)));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(url: &str, value: Vec<u8>) -> MessageField<Any> {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        MessageField::some(a)
    }

    fn runc(o: &Options) -> MessageField<Any> {
        any("containerd.runc.v1.Options", o.write_to_bytes().unwrap())
    }

    /// runtimeoptions.v1.Options encoded by hand: type_url, config_path, config_body.
    fn runtimeoptions(path: &str, body: &str) -> MessageField<Any> {
        let mut v = Vec::new();
        for (field, data) in [(1u8, RUNTIMEOPTIONS_TYPE.as_bytes()), (2, path.as_bytes()), (3, body.as_bytes())] {
            if data.is_empty() {
                continue;
            }
            v.push(field << 3 | 2);
            v.push(data.len() as u8);
            v.extend_from_slice(data);
        }
        any(RUNTIMEOPTIONS_TYPE, v)
    }

    #[test]
    fn runcs_options_are_taken_or_refused_by_name() {
        assert_eq!(parse(&MessageField::none()).unwrap(), RuntimeOptions::default());
        let o = Options {
            root: "/run/elsewhere".into(),
            io_uid: 1000,
            io_gid: 1001,
            no_new_keyring: true,
            ..Default::default()
        };
        let got = parse(&runc(&o)).unwrap();
        assert_eq!(got.root, Some(PathBuf::from("/run/elsewhere")));
        assert_eq!(got.io_owner, Some((1000, 1001)));
        assert!(got.no_new_keyring);
        assert!(!got.systemd_cgroup);
        assert!(parse(&runc(&Options { systemd_cgroup: true, ..Default::default() })).unwrap().systemd_cgroup);
        for (o, word) in [
            (Options { no_pivot_root: true, ..Default::default() }, "NoPivotRoot"),
            (Options { binary_name: "crun".into(), ..Default::default() }, "BinaryName"),
        ] {
            assert!(parse(&runc(&o)).unwrap_err().message.contains(word), "{word}");
        }
    }

    #[test]
    fn cris_runtimeoptions_carry_toml_by_path_or_body() {
        let body = "# strata\nRoot = '/run/strata-cri'\nIoUid = 1000\nio_gid = 1000 # the pod's\nTypeUrl = ''\n";
        let got = parse(&runtimeoptions("", body)).unwrap();
        assert_eq!(got.root, Some(PathBuf::from("/run/strata-cri")));
        assert_eq!(got.io_owner, Some((1000, 1000)));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shim.toml");
        std::fs::write(&file, "ShimCgroup = \"/strata-shims\"\nNoNewKeyring = true\n").unwrap();
        let got = parse(&runtimeoptions(file.to_str().unwrap(), "")).unwrap();
        assert_eq!(got.shim_cgroup.as_deref(), Some("/strata-shims"));
        assert!(got.no_new_keyring);
        assert!(parse(&runtimeoptions("", "SystemdCgroup = true")).unwrap().systemd_cgroup);
        for (body, word) in [
            ("SystemdCgroup = 'yes'", "SystemdCgroup: wrong type"),
            ("Colour = 'blue'", "Colour"),
            ("[options]\nRoot = '/x'", "tables"),
            ("IoUid = 'root'", "integer"),
        ] {
            let e = parse(&runtimeoptions("", body)).unwrap_err().message;
            assert!(e.contains(word) && e.contains("ConfigBody"), "{body}: {e}");
        }
        assert!(parse(&runtimeoptions("/nonexistent/shim.toml", "")).unwrap_err().message.contains("/nonexistent"));
        assert!(parse(&any("example.com/Other", vec![1])).is_err());
    }
}
