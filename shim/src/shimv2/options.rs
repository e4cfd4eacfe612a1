//! Runtime options: the `Options` message containerd passes with `Create` (runc's, which CRI's
//! runtime `options` table and `ctr run --runc-*` fill). strata honours the state root and the
//! owner of the stdio pipes (`IoUid`/`IoGid`, set by CRI for pods in a user namespace), refuses
//! what it cannot do rather than ignoring it (a systemd cgroup driver), and logs what does not
//! apply to it; other option types (CRI's `runtimeoptions.v1.Options`) are ignored.

use super::ttrpc::{RpcResult, status};
use containerd_shim::api::Options;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc::Code;
use std::path::PathBuf;

/// What strata takes from the runtime options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The state root (`Root`), to which the namespace is appended as runc's shim does.
    pub root: Option<PathBuf>,
    /// Who owns the pipes and FIFOs given to the task's processes as stdio (`IoUid`, `IoGid`),
    /// so that a process in a user namespace can reopen them (`/proc/self/fd/1`, `/dev/stdout`).
    pub io_owner: Option<(u32, u32)>,
}

/// Decodes and checks the options of a `Create` request.
pub fn parse(any: &MessageField<Any>) -> RpcResult<RuntimeOptions> {
    let Some(any) = any.as_ref() else { return Ok(RuntimeOptions::default()) };
    if any.value.is_empty() && any.type_url.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    if !any.type_url.ends_with("runc.v1.Options") {
        // CRI sends runtimeoptions.v1.Options (a config file path) to runtimes it does not know.
        log::warn!("runtime options of type {:?} do not apply to strata and are ignored", any.type_url);
        return Ok(RuntimeOptions::default());
    }
    let o = Options::parse_from_bytes(&any.value)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("runtime options: {e}")))?;
    if o.systemd_cgroup {
        return Err(status(
            Code::INVALID_ARGUMENT,
            "runtime options: SystemdCgroup is not supported: strata manages cgroupfs itself (set SystemdCgroup = false)",
        ));
    }
    if !o.binary_name.is_empty() || o.no_pivot_root || o.no_new_keyring || !o.shim_cgroup.is_empty() {
        log::warn!(
            "runtime options BinaryName, NoPivotRoot, NoNewKeyring and ShimCgroup do not apply to strata and are ignored"
        );
    }
    Ok(RuntimeOptions {
        root: (!o.root.is_empty()).then(|| PathBuf::from(&o.root)),
        io_owner: (o.io_uid != 0 || o.io_gid != 0).then_some((o.io_uid, o.io_gid)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(o: &Options) -> MessageField<Any> {
        let mut a = Any::new();
        a.type_url = "containerd.runc.v1.Options".into();
        a.value = o.write_to_bytes().unwrap();
        MessageField::some(a)
    }

    #[test]
    fn none_root_and_refusals() {
        assert_eq!(parse(&MessageField::none()).unwrap(), RuntimeOptions::default());
        let o = Options { root: "/run/elsewhere".into(), ..Default::default() };
        assert_eq!(parse(&any(&o)).unwrap().root, Some(PathBuf::from("/run/elsewhere")));
        let o = Options { systemd_cgroup: true, ..Default::default() };
        assert!(parse(&any(&o)).is_err());
        let o = Options { io_uid: 1000, io_gid: 1001, ..Default::default() };
        assert_eq!(parse(&any(&o)).unwrap().io_owner, Some((1000, 1001)));
        assert_eq!(parse(&any(&Options::default())).unwrap().io_owner, None);
        let mut other = Any::new();
        other.type_url = "runtimeoptions.v1.Options".into();
        other.value = vec![1];
        assert_eq!(parse(&MessageField::some(other)).unwrap(), RuntimeOptions::default());
    }
}
