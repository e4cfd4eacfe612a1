//! The CRI client: tonic over containerd's Unix socket, every call bounded by a timeout.
//!
//! [`CriAsync`] makes the calls (cheap to clone, for calls made at once); [`Cri`] owns a
//! single-threaded tokio runtime and offers the same calls blocking, which is how the
//! scenarios read best.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Error, Result};

/// The CRI's two services on one channel; each call is bounded by `timeout`.
#[derive(Clone)]
pub struct CriAsync {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

async fn bounded<T>(
    call: &'static str,
    limit: Duration,
    f: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Err(_) => Err(Error::Timeout { call, timeout: limit }),
        Ok(Err(status)) => Err(Error::Rpc { call, code: status.code(), message: status.message().to_string() }),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

impl CriAsync {
    /// Connects to the socket at `path` (lazily: the first call connects).
    pub fn new(path: &Path, timeout: Duration) -> Result<CriAsync> {
        let socket: PathBuf = path.to_path_buf();
        let endpoint = Endpoint::try_from("http://[::]")
            .map_err(|e| Error::Connect { socket: socket.display().to_string(), source: e })?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }));
        Ok(CriAsync {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout,
        })
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime.clone();
        bounded("Version", self.timeout, c.version(api::VersionRequest { version: "v1".into() })).await
    }

    pub async fn status(&self) -> Result<api::StatusResponse> {
        let mut c = self.runtime.clone();
        bounded("Status", self.timeout, c.status(api::StatusRequest { verbose: false })).await
    }

    pub async fn run_pod(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.to_string() };
        Ok(bounded("RunPodSandbox", self.timeout, c.run_pod_sandbox(req)).await?.pod_sandbox_id)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        bounded("StopPodSandbox", self.timeout, c.stop_pod_sandbox(req)).await.map(drop)
    }

    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        bounded("RemovePodSandbox", self.timeout, c.remove_pod_sandbox(req)).await.map(drop)
    }

    pub async fn pod_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false };
        bounded("PodSandboxStatus", self.timeout, c.pod_sandbox_status(req))
            .await?
            .status
            .ok_or(Error::Containerd("PodSandboxStatus without a status".into()))
    }

    pub async fn list_pods(&self, filter: Option<api::PodSandboxFilter>) -> Result<Vec<api::PodSandbox>> {
        let mut c = self.runtime.clone();
        let req = api::ListPodSandboxRequest { filter };
        Ok(bounded("ListPodSandbox", self.timeout, c.list_pod_sandbox(req)).await?.items)
    }

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        Ok(bounded("CreateContainer", self.timeout, c.create_container(req)).await?.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest { container_id: id.to_string() };
        bounded("StartContainer", self.timeout, c.start_container(req)).await.map(drop)
    }

    /// StopContainer with a grace period of `grace` seconds; the call may take that long, so its
    /// own limit is the timeout plus the grace.
    pub async fn stop_container(&self, id: &str, grace: i64) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopContainerRequest { container_id: id.to_string(), timeout: grace };
        let limit = self.timeout + Duration::from_secs(grace.max(0) as u64);
        bounded("StopContainer", limit, c.stop_container(req)).await.map(drop)
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemoveContainerRequest { container_id: id.to_string() };
        bounded("RemoveContainer", self.timeout, c.remove_container(req)).await.map(drop)
    }

    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        bounded("ContainerStatus", self.timeout, c.container_status(req))
            .await?
            .status
            .ok_or(Error::Containerd("ContainerStatus without a status".into()))
    }

    pub async fn list_containers(&self, filter: Option<api::ContainerFilter>) -> Result<Vec<api::Container>> {
        let mut c = self.runtime.clone();
        let req = api::ListContainersRequest { filter };
        Ok(bounded("ListContainers", self.timeout, c.list_containers(req)).await?.containers)
    }

    pub async fn update_resources(&self, id: &str, linux: api::LinuxContainerResources) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        bounded("UpdateContainerResources", self.timeout, c.update_container_resources(req)).await.map(drop)
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::ReopenContainerLogRequest { container_id: id.to_string() };
        bounded("ReopenContainerLog", self.timeout, c.reopen_container_log(req)).await.map(drop)
    }

    /// ExecSync of `cmd` with containerd's own limit of `limit` seconds (0: none); the call's
    /// limit is the timeout plus that.
    pub async fn exec_sync(&self, id: &str, cmd: &[&str], limit: i64) -> Result<api::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: limit,
        };
        let bound = self.timeout + Duration::from_secs(limit.max(0) as u64);
        bounded("ExecSync", bound, c.exec_sync(req)).await
    }

    /// Exec: the streaming URL for `cmd` in container `id` with the streams asked for.
    pub async fn exec(&self, id: &str, cmd: &[&str], io: StreamsWanted) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: io.tty,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
        };
        Ok(bounded("Exec", self.timeout, c.exec(req)).await?.url)
    }

    /// Attach: the streaming URL for container `id`'s own streams.
    pub async fn attach(&self, id: &str, io: StreamsWanted) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::AttachRequest {
            container_id: id.to_string(),
            stdin: io.stdin,
            tty: io.tty,
            stdout: io.stdout,
            stderr: io.stderr,
        };
        Ok(bounded("Attach", self.timeout, c.attach(req)).await?.url)
    }

    pub async fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatsRequest { container_id: id.to_string() };
        bounded("ContainerStats", self.timeout, c.container_stats(req))
            .await?
            .stats
            .ok_or(Error::Containerd("ContainerStats without stats".into()))
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> Result<Vec<api::ContainerStats>> {
        let mut c = self.runtime.clone();
        let req = api::ListContainerStatsRequest { filter };
        Ok(bounded("ListContainerStats", self.timeout, c.list_container_stats(req)).await?.stats)
    }

    /// Whether CRI lists `image` (by reference).
    pub async fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = self.images.clone();
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec { image: image.to_string(), ..Default::default() }),
            verbose: false,
        };
        Ok(bounded("ImageStatus", self.timeout, c.image_status(req)).await?.image.is_some())
    }

    /// Ok once CRI answers and says the runtime and the network are ready.
    pub async fn ready(&self) -> Result<()> {
        self.version().await?;
        let status = self.status().await?;
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let not_ready: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} ({}: {})", c.r#type, c.reason, c.message))
            .collect();
        if conditions.is_empty() || !not_ready.is_empty() {
            return Err(Error::Containerd(format!("CRI not ready: {}", not_ready.join(", "))));
        }
        Ok(())
    }
}

/// The streams an Exec or Attach asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamsWanted {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The CRI client with blocking calls.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: CriAsync,
}

impl Cri {
    /// A client of the CRI socket at `path`, each call limited to `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building a tokio runtime", e))?;
        // The lazy channel spawns its worker on the runtime it is made in.
        let client = rt.block_on(async { CriAsync::new(path, timeout) })?;
        Ok(Cri { rt, client })
    }

    /// The async client, for calls made at once (run them with [`Cri::block_on`]).
    pub fn client(&self) -> CriAsync {
        self.client.clone()
    }

    /// Runs `f` on this client's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn version(&self) -> Result<api::VersionResponse> {
        self.rt.block_on(self.client.version())
    }
    pub fn ready(&self) -> Result<()> {
        self.rt.block_on(self.client.ready())
    }
    pub fn run_pod(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        self.rt.block_on(self.client.run_pod(config, handler))
    }
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.client.stop_pod(id))
    }
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.client.remove_pod(id))
    }
    pub fn pod_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        self.rt.block_on(self.client.pod_status(id))
    }
    pub fn list_pods(&self, filter: Option<api::PodSandboxFilter>) -> Result<Vec<api::PodSandbox>> {
        self.rt.block_on(self.client.list_pods(filter))
    }
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String> {
        self.rt.block_on(self.client.create_container(pod_id, config, sandbox))
    }
    pub fn start_container(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.client.start_container(id))
    }
    pub fn stop_container(&self, id: &str, grace: i64) -> Result<()> {
        self.rt.block_on(self.client.stop_container(id, grace))
    }
    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.client.remove_container(id))
    }
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        self.rt.block_on(self.client.container_status(id))
    }
    pub fn list_containers(&self, filter: Option<api::ContainerFilter>) -> Result<Vec<api::Container>> {
        self.rt.block_on(self.client.list_containers(filter))
    }
    pub fn update_resources(&self, id: &str, linux: api::LinuxContainerResources) -> Result<()> {
        self.rt.block_on(self.client.update_resources(id, linux))
    }
    pub fn reopen_log(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.client.reopen_log(id))
    }
    pub fn exec_sync(&self, id: &str, cmd: &[&str], limit: i64) -> Result<api::ExecSyncResponse> {
        self.rt.block_on(self.client.exec_sync(id, cmd, limit))
    }
    pub fn exec(&self, id: &str, cmd: &[&str], io: StreamsWanted) -> Result<String> {
        self.rt.block_on(self.client.exec(id, cmd, io))
    }
    pub fn attach(&self, id: &str, io: StreamsWanted) -> Result<String> {
        self.rt.block_on(self.client.attach(id, io))
    }
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        self.rt.block_on(self.client.container_stats(id))
    }
    pub fn list_container_stats(&self, filter: Option<api::ContainerStatsFilter>) -> Result<Vec<api::ContainerStats>> {
        self.rt.block_on(self.client.list_container_stats(filter))
    }
    pub fn image_present(&self, image: &str) -> Result<bool> {
        self.rt.block_on(self.client.image_present(image))
    }
}
