//! Pods and containers configured as kubelet configures them (cgroupfs driver): a pod's
//! cgroup parent `/kubepods/besteffort/pod<uid>`, its log directory
//! `<logs>/<namespace>_<name>_<uid>` with `<container>/0.log` in it, the containers' namespace
//! options copied from the pod's; and [`sweep`], which removes every pod of a scenario (and its
//! pod cgroup, as kubelet does) whatever state the scenario left it in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1 as api;
use k8s_cri::v1::NamespaceMode;

use crate::containerd::BUSYBOX_IMAGE;
use crate::{Cri, Error, Result};

/// The label that names the scenario a pod belongs to.
pub const SCENARIO_LABEL: &str = "strata-cri/scenario";
/// The Kubernetes namespace of every pod.
pub const POD_NAMESPACE: &str = "strata-cri";
/// The cgroup (v2 mount) under which kubelet would put best-effort pods.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/kubepods/besteffort";

/// The namespaces a pod (and its containers) get.
#[derive(Debug, Clone, Copy)]
pub struct Namespaces {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

impl Default for Namespaces {
    /// A pod's own network and IPC, a pid namespace per container: kubelet's defaults.
    fn default() -> Self {
        Namespaces { network: NamespaceMode::Pod, pid: NamespaceMode::Container, ipc: NamespaceMode::Pod }
    }
}

impl Namespaces {
    fn option(&self) -> api::NamespaceOption {
        api::NamespaceOption {
            network: self.network as i32,
            pid: self.pid as i32,
            ipc: self.ipc as i32,
            ..Default::default()
        }
    }
}

/// The configuration kubelet would send for pod `name` of `scenario`; its log directory is
/// created under `log_root`.
pub fn sandbox_config(log_root: &Path, scenario: &str, name: &str, ns: Namespaces) -> Result<api::PodSandboxConfig> {
    static N: AtomicU32 = AtomicU32::new(0);
    let uid = format!("{}-{}-{}", name, std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let log_directory = log_root.join(format!("{POD_NAMESPACE}_{name}_{uid}"));
    std::fs::create_dir_all(&log_directory)
        .map_err(|e| Error::io(format!("creating {}", log_directory.display()), e))?;
    Ok(api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.clone(),
            namespace: POD_NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_directory.display().to_string(),
        labels: [(SCENARIO_LABEL.to_string(), scenario.to_string())].into(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(ns.option()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A container as kubelet would configure it, in the busybox image.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub command: Vec<String>,
    pub memory_limit: Option<i64>,
    pub namespaces: Namespaces,
    /// Its stdin is kept open for Attach (`stdin: true`, `stdinOnce: false`).
    pub stdin: bool,
    pub tty: bool,
}

impl ContainerSpec {
    /// Container `name` running `sh -c SCRIPT`.
    pub fn sh(name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            memory_limit: None,
            namespaces: Namespaces::default(),
            stdin: false,
            tty: false,
        }
    }

    /// The same with an open stdin (and a terminal if `tty`), as `kubectl run -i [-t]`.
    pub fn interactive(mut self, tty: bool) -> ContainerSpec {
        self.stdin = true;
        self.tty = tty;
        self
    }

    /// The same with a memory limit of `bytes`.
    pub fn memory(mut self, bytes: i64) -> ContainerSpec {
        self.memory_limit = Some(bytes);
        self
    }

    /// The config for a container of the pod configured by `pod` (whose namespaces it takes).
    pub fn config(&self, pod: &api::PodSandboxConfig) -> api::ContainerConfig {
        let ns = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_else(|| self.namespaces.option());
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: self.name.clone(), attempt: 0 }),
            image: Some(api::ImageSpec { image: BUSYBOX_IMAGE.to_string(), ..Default::default() }),
            command: self.command.clone(),
            stdin: self.stdin,
            tty: self.tty,
            log_path: format!("{}/0.log", self.name),
            labels: pod.labels.clone(),
            linux: Some(api::LinuxContainerConfig {
                resources: Some(api::LinuxContainerResources {
                    cpu_shares: 2,
                    memory_limit_in_bytes: self.memory_limit.unwrap_or(0),
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// A pod the scenario runs; [`sweep`] removes it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: api::PodSandboxConfig,
}

impl Pod {
    /// RunPodSandbox with `handler`.
    pub fn run(cri: &Cri, handler: &str, config: api::PodSandboxConfig) -> Result<Pod> {
        let id = cri.run_pod(&config, handler)?;
        Ok(Pod { id, config })
    }

    /// Where container `name`'s log is (kubelet's layout), its directory created as kubelet does.
    pub fn log_path(&self, name: &str) -> PathBuf {
        let path = Path::new(&self.config.log_directory).join(name).join("0.log");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        path
    }

    /// CreateContainer of `spec` in this pod.
    pub fn create(&self, cri: &Cri, spec: &ContainerSpec) -> Result<String> {
        self.log_path(&spec.name);
        cri.create_container(&self.id, &spec.config(&self.config), &self.config)
    }

    /// CreateContainer then StartContainer.
    pub fn start(&self, cri: &Cri, spec: &ContainerSpec) -> Result<String> {
        let id = self.create(cri, spec)?;
        cri.start_container(&id)?;
        Ok(id)
    }
}

/// Polls ContainerStatus until the container is in `state` (or `limit` passes).
pub fn wait_state(cri: &Cri, id: &str, state: api::ContainerState, limit: Duration) -> Result<api::ContainerStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let st = cri.container_status(id)?;
        if st.state == state as i32 {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            return Err(Error::Containerd(format!(
                "container {} is {:?} (reason {:?}, message {:?}), not {state:?}, after {limit:?}",
                short(id),
                api::ContainerState::try_from(st.state).unwrap_or(api::ContainerState::ContainerUnknown),
                st.reason,
                st.message
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first 12 characters of an id, as containerd's tools print them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The pod cgroup of a pod with metadata uid `uid`.
pub fn pod_cgroup(uid: &str) -> PathBuf {
    Path::new(CGROUP_PARENT).join(format!("pod{uid}"))
}

/// Removes every pod labelled with `scenario` (stop, then remove; each tried twice), then each
/// pod's cgroup, as kubelet does once a pod is gone. Returns what could not be removed.
pub fn sweep(cri: &Cri, scenario: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let filter = api::PodSandboxFilter {
        label_selector: [(SCENARIO_LABEL.to_string(), scenario.to_string())].into(),
        ..Default::default()
    };
    let pods = match cri.list_pods(Some(filter)) {
        Ok(p) => p,
        Err(e) => return vec![format!("listing the pods of {scenario}: {e}")],
    };
    let client = cri.client();
    // Pods go at once, as kubelet's workers remove them.
    let results: Vec<(String, String, Result<()>)> = cri.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in pods {
            let c = client.clone();
            set.spawn(async move {
                let uid = p.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
                let mut result = Ok(());
                for _ in 0..2 {
                    result = match c.stop_pod(&p.id).await {
                        Ok(()) => c.remove_pod(&p.id).await,
                        Err(e) => Err(e),
                    };
                    if result.is_ok() {
                        break;
                    }
                }
                (p.id, uid, result)
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                all.push(r);
            }
        }
        all
    });
    for (id, uid, result) in results {
        if let Err(e) = result {
            problems.push(format!("removing pod {}: {e}", short(&id)));
            continue;
        }
        let cg = pod_cgroup(&uid);
        if cg.exists()
            && let Err(e) = std::fs::remove_dir(&cg)
        {
            problems.push(format!("removing the pod cgroup {}: {e}", cg.display()));
        }
    }
    problems
}
