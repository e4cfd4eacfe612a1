//! The gRPC service: containerd's snapshots API over [`Snapshots`].
//!
//! Every call runs on the blocking pool with the snapshots locked, except the pool adoption of a
//! commit ([`layerstore::Store::adopt_tree_deferring`]), which runs without the lock once the
//! commit is recorded and answered: containerd goes on (the last layer of an import is done)
//! while the tree's files are hashed and shared. Until the adoption has made its changes to the
//! tree, every call that would hand out mounts of that tree or read it (Prepare and View above it,
//! Mounts of a snapshot above it, its Usage and Remove) waits ([`Snapshots::adopting`]), so no
//! mount ever shows a tree being changed; calls about other snapshots go on.
//! Adoptions run one at a time. The pool links of a layer's new content, which change nothing in
//! its tree, are made after that by a thread of low priority; the next adoption waits for them,
//! and so does the daemon's exit (which waits for the adoption too), each lifting that thread to
//! normal priority while it waits.
//!
//! While containerd unpacks a layer into an active snapshot (one its unpacker names `extract-…`),
//! a thread of low priority hashes the files it has finished ([`layerstore::Prehashed`]: under
//! read leases, re-checked at the adoption), so the adoption reads again only what changed since.
//! It stops at the commit or removal. A tree that has not changed for a minute (a pull whose
//! download stalls, also in the middle of a file: the same files left open pass after pass are
//! no change) is looked at every two seconds only; such a hashing gives way to a new unpack's
//! when four run, and ends after half an hour without a change; what it hashed waits for its
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::api::snapshots_server;
use crate::api::{
    CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse, MountsRequest, MountsResponse,
    PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse,
    UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest,
    ViewSnapshotResponse,
};
use crate::snapshots::{Error, Info, Kind, Mount, Snapshots, Time};

/// The service containerd's proxy plugin calls.
#[derive(Debug, Clone)]
pub struct Service {
    snapshots: Arc<Mutex<Snapshots>>,
    /// The early hashing of each active snapshot being unpacked, by key.
    hashing: Arc<Mutex<HashMap<String, EarlyHashing>>>,
    /// Held by an adoption and then by its deferred pool links.
    pooling: Arc<tokio::sync::Mutex<()>>,
    /// How many adoptions have ended: calls that found a tree still being adopted wait for the
    /// next and ask again.
    adoptions_ended: Arc<tokio::sync::watch::Sender<u64>>,
    /// The thread making deferred pool links: whoever waits for `pooling` raises it out of
    /// `SCHED_IDLE` (else a busy machine would hold the next commit behind idle-time work).
    linking: Arc<Mutex<Linking>>,
}

/// Where the deferred pool links stand.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Linking {
    /// The id of the thread making them, if one runs (cleared under the lock before it ends,
    /// even by a panic, so the id names it while the lock is held).
    tid: Option<libc::pid_t>,
    /// Callers waiting for `pooling`: while there are any, links run at normal priority.
    waiters: usize,
}

/// A caller waiting for `pooling`, counted in [`Linking::waiters`] until dropped.
struct Waiting(Arc<Mutex<Linking>>);

impl Waiting {
    /// Counts the caller in and lifts the running links thread, if any.
    fn new(linking: &Arc<Mutex<Linking>>) -> Waiting {
        let mut state = linking.lock().unwrap_or_else(|p| p.into_inner());
        state.waiters += 1;
        if let Some(tid) = state.tid {
            run_normally(tid);
        }
        Waiting(linking.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.waiters = state.waiters.saturating_sub(1);
    }
}

/// The links thread's mark in [`Linking`], cleared when the thread ends (or unwinds).
struct LinksRunning(Arc<Mutex<Linking>>);

impl LinksRunning {
    /// Marks the calling thread as the one making deferred links, in idle time unless someone
    /// waits.
    fn start(linking: &Arc<Mutex<Linking>>) -> (LinksRunning, libc::pid_t) {
        let mut state = linking.lock().unwrap_or_else(|p| p.into_inner());
        if state.waiters == 0 {
            run_when_idle();
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        state.tid = Some(tid);
        (LinksRunning(linking.clone()), tid)
    }
}

impl Drop for LinksRunning {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).tid = None;
    }
}

/// The most layers hashed early at once (containerd unpacks a few layers of a pull at a time).
const MAX_EARLY: usize = 4;
/// The most early hashings kept, running or stopped with their hashes waiting for a commit.
const MAX_KEPT: usize = 2 * MAX_EARLY;
/// The pause between two passes over a tree being written.
const PASS_INTERVAL: Duration = Duration::from_millis(100);
/// How long a tree may go unchanged before its early hashing dozes (an unpack that stalled, as a
/// pull does while a download waits, or one that stopped and whose snapshot is neither committed
/// nor removed yet): it looks at the tree every [`DOZE_INTERVAL`] only, wakes when the tree
/// changes again, and gives way to a new unpack when [`MAX_EARLY`] run (keeping its hashes).
#[cfg(not(test))]
const DOZE_AFTER: Duration = Duration::from_secs(60);
#[cfg(test)]
const DOZE_AFTER: Duration = Duration::from_millis(400);
/// How long a tree may go unchanged before its early hashing ends (a snapshot that is neither
/// committed nor removed, forgotten by whoever unpacked into it): its hashes wait for a commit.
const DOZE_END: Duration = Duration::from_secs(30 * 60);
/// The pause between two passes of a dozing early hashing.
#[cfg(not(test))]
const DOZE_INTERVAL: Duration = Duration::from_secs(2);
#[cfg(test)]
const DOZE_INTERVAL: Duration = Duration::from_millis(200);

/// A thread hashing the files of one active snapshot while containerd writes them.
#[derive(Debug)]
struct EarlyHashing {
    stop: Arc<AtomicBool>,
    /// Set while the tree has not changed for [`DOZE_AFTER`].
    dozing: Arc<AtomicBool>,
    /// How many files it holds hashes of, after its last pass.
    hashed: Arc<AtomicUsize>,
    started: std::time::Instant,
    thread: std::thread::JoinHandle<layerstore::Prehashed>,
}

impl EarlyHashing {
    fn start(tree: PathBuf) -> std::io::Result<EarlyHashing> {
        let stop = Arc::new(AtomicBool::new(false));
        let dozing = Arc::new(AtomicBool::new(false));
        let hashed = Arc::new(AtomicUsize::new(0));
        let (flag, doze, count) = (stop.clone(), dozing.clone(), hashed.clone());
        let thread = std::thread::Builder::new().name("early-hash".into()).spawn(move || {
            // Behind containerd's own work on the same cores.
            run_when_idle();
            let mut early = layerstore::Prehashed::new();
            let mut last_change = std::time::Instant::now();
            // (the same files left pending pass after pass are a stall, not progress)
            let mut last_pending = (0, 0);
            while !flag.load(Ordering::Relaxed) && last_change.elapsed() < DOZE_END {
                match early.pass(&tree, &flag) {
                    Ok(p) => {
                        if p.hashed > 0 || (p.pending, p.pending_set) != last_pending {
                            last_change = std::time::Instant::now();
                        }
                        last_pending = (p.pending, p.pending_set);
                    }
                    Err(e) => {
                        eprintln!("strata-snapshotter: early hashing of {} stopped: {e}", tree.display());
                        break;
                    }
                }
                count.store(early.len(), Ordering::Relaxed);
                let dozing = last_change.elapsed() >= DOZE_AFTER;
                doze.store(dozing, Ordering::Relaxed);
                std::thread::park_timeout(if dozing { DOZE_INTERVAL } else { PASS_INTERVAL });
            }
            early
        })?;
        Ok(EarlyHashing { stop, dozing, hashed, started: std::time::Instant::now(), thread })
    }

    /// Whether the thread still hashes (it was not stopped and did not fail).
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && !self.thread.is_finished()
    }

    /// Asks the thread to stop at its next file, keeping what it hashed for [`EarlyHashing::finish`].
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
    }

    /// Stops the thread at its next file and returns what it hashed.
    fn finish(self) -> Option<layerstore::Prehashed> {
        self.stop();
        self.thread.join().ok()
    }
}

impl Service {
    /// Serves `snapshots`.
    pub fn new(snapshots: Snapshots) -> Service {
        Service {
            snapshots: Arc::new(Mutex::new(snapshots)),
            hashing: Arc::default(),
            pooling: Arc::default(),
            adoptions_ended: Arc::new(tokio::sync::watch::Sender::new(0)),
            linking: Arc::default(),
        }
    }

    /// The snapshots served (the differ unpacks into them).
    pub fn snapshots(&self) -> Arc<Mutex<Snapshots>> {
        self.snapshots.clone()
    }

    /// Waits until the last commit's adoption and pool links are done.
    pub async fn settle(&self) {
        let _ = self.take_pooling().await;
    }

    /// Takes the adoptions' lock; if deferred pool links hold it, raises their thread to normal
    /// priority first.
    async fn take_pooling(&self) -> tokio::sync::OwnedMutexGuard<()> {
        if let Ok(guard) = self.pooling.clone().try_lock_owned() {
            return guard;
        }
        let _waiting = Waiting::new(&self.linking);
        self.pooling.clone().lock_owned().await
    }

    /// Starts hashing the tree of the active snapshot `key` early, if containerd unpacks into it.
    fn hash_early(&self, key: &str, tree: PathBuf) {
        let mut gave_way = None;
        {
            let mut hashing = self.hashing.lock().unwrap_or_else(|p| p.into_inner());
            if hashing.contains_key(key) {
                return;
            }
            let running = |h: &HashMap<String, EarlyHashing>| h.values().filter(|h| h.running()).count();
            if running(&hashing) >= MAX_EARLY {
                // An unpack that stalled gives way to a new one; its hashes wait for its commit.
                match hashing.iter().find(|(_, h)| h.running() && h.dozing.load(Ordering::Relaxed)) {
                    Some((stalled, h)) => {
                        h.stop();
                        gave_way = Some((stalled.clone(), h.hashed.load(Ordering::Relaxed)));
                    }
                    None => return,
                }
            }
            // (the hashes kept longest, for a commit that may never come, go first)
            while hashing.len() >= MAX_KEPT {
                let Some(oldest) =
                    hashing.iter().filter(|(_, h)| !h.running()).min_by_key(|(_, h)| h.started).map(|(k, _)| k.clone())
                else {
                    break;
                };
                hashing.remove(&oldest);
            }
            match EarlyHashing::start(tree) {
                Ok(h) => {
                    hashing.insert(key.to_string(), h);
                }
                Err(e) => eprintln!("strata-snapshotter: early hashing of {key:?} not started: {e}"),
            }
        }
        if let Some((stalled, n)) = gave_way {
            eprintln!(
                "strata-snapshotter: early hashing of {stalled:?} stalled: stopped for {key:?}, {n} files hashed for its commit"
            );
        }
    }

    /// Stops the early hashing of `key`, if any, on the blocking pool; returns its hashes.
    async fn stop_hashing(&self, key: &str) -> Option<layerstore::Prehashed> {
        let h = self.hashing.lock().unwrap_or_else(|p| p.into_inner()).remove(key)?;
        tokio::task::spawn_blocking(move || h.finish()).await.ok().flatten()
    }

    /// Commits active snapshot `r.key` as `r.name`, sends the answer, then adopts the tree (see
    /// the module documentation).
    async fn commit_and_adopt(
        &self,
        r: CommitSnapshotRequest,
        answer: tokio::sync::oneshot::Sender<Result<(), Status>>,
    ) {
        let name = r.name.clone();
        let early = self.stop_hashing(&r.key).await;
        // One adoption at a time, after the last one's pool links.
        let pooling = self.take_pooling().await;
        let (snapshots, ended) = (self.snapshots.clone(), self.adoptions_ended.clone());
        let recorded = self
            .with(move |s| {
                let adopt = s.commit(&r.name, &r.key, labels(r.labels))?;
                // Marked under the same lock, so no call sees the committed tree before; the
                // mark goes with `ending`, whatever becomes of this task.
                s.adopting(adopt.id);
                let ending = AdoptionEnd { snapshots, id: adopt.id, ended };
                Ok((adopt, s.store().clone(), ending))
            })
            .await;
        let (adopt, store, ending) = match recorded {
            Ok(r) => r,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        // The commit stands whatever happens from here: a tree left out of the pool is only not
        // deduplicated.
        let _ = answer.send(Ok(()));
        let adopted = tokio::task::spawn_blocking(move || {
            let data = adopt.data.as_ref().map(|(dir, index)| layerstore::DataLayer { dir, index });
            let adopted = store.adopt_tree_deferring(&adopt.tree, data.as_ref(), early.as_ref());
            // A failed adoption keeps its mark: the next start clears what it may have left.
            // (On file systems that keep metadata changes in order, as journaled ones do, the
            // mark's removal reaches the disk after the renames before it.)
            if adopted.is_ok()
                && let Err(e) = std::fs::remove_file(&adopt.marker)
            {
                eprintln!("strata-snapshotter: {}: {e}", adopt.marker.display());
            }
            drop(ending);
            adopted.map(|(_, later)| (store, later))
        })
        .await;
        match adopted {
            Ok(Ok((store, later))) => link_later(store, later, name, pooling, self.linking.clone()),
            Ok(Err(e)) => eprintln!("strata-snapshotter: commit {name:?}: its files stay out of the pool: {e}"),
            Err(e) => eprintln!("strata-snapshotter: commit {name:?}: pooling failed: {e}"),
        }
    }

    /// Runs `f` on the blocking pool with the snapshots locked.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        self.with_locked(f).await?.map_err(status)
    }

    /// [`Service::with`] for a call that needs committed trees as they will stay: while `f` finds
    /// one still being adopted ([`Error::Adopting`]), it waits for the next adoption to end and
    /// runs again.
    async fn with_adopted<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Snapshots) -> Result<T, Error> + Send + Sync + 'static,
    ) -> Result<T, Status> {
        let f = Arc::new(f);
        // (subscribed before the first try: an adoption that ends after it wakes the wait)
        let mut ended = self.adoptions_ended.subscribe();
        loop {
            let f = f.clone();
            match self.with_locked(move |s| f(s)).await? {
                Err(Error::Adopting(_)) => {
                    if ended.changed().await.is_err() {
                        return Err(Status::unavailable("the snapshotter is stopping"));
                    }
                }
                done => return done.map_err(status),
            }
        }
    }

    async fn with_locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<Result<T, Error>, Status> {
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = snapshots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut s)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshotter task failed: {e}")))
    }
}

/// Ends the adoption of one committed snapshot when dropped (also when the adoption panicked or
/// never started): its tree may be mounted again, and the calls waiting for it ask again. Never
/// dropped with the snapshots locked.
struct AdoptionEnd {
    snapshots: Arc<Mutex<Snapshots>>,
    id: u64,
    ended: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Drop for AdoptionEnd {
    fn drop(&mut self) {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner()).adopted(self.id);
        self.ended.send_modify(|n| *n += 1);
    }
}

/// Puts the calling thread in `SCHED_IDLE`: it runs only on a core nothing else wants (else at
/// the lowest nice level), so work that can wait never slows containerd's unpack.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on this thread's own id with a valid sched_param; setpriority
    // on the same id; no pointers kept.
    unsafe {
        if libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
    }
}

/// Puts thread `tid` of this process back in the normal policy at nice 0.
fn run_normally(tid: libc::pid_t) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in run_when_idle, on a thread of this process that the caller keeps alive.
    unsafe {
        libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 0);
    }
}

/// Makes the pool links an adoption left for later on a thread of low priority, holding the
/// adoptions' lock (`pooling`) until they are made; the thread's id is in `linking` meanwhile.
fn link_later(
    store: layerstore::Store,
    later: layerstore::DeferredLinks,
    name: String,
    pooling: tokio::sync::OwnedMutexGuard<()>,
    linking: Arc<Mutex<Linking>>,
) {
    if later.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new().name("pool-links".into()).spawn(move || {
        let (running, _) = LinksRunning::start(&linking);
        if let Err(e) = store.link_deferred(later) {
            eprintln!("strata-snapshotter: commit {name:?}: some of its new files stay out of the pool: {e}");
        }
        drop(running);
        drop(pooling);
    });
    if let Err(e) = spawned {
        eprintln!("strata-snapshotter: a commit's new files stay out of the pool: no thread to link them: {e}");
    }
}

/// containerd reads the gRPC code back into its error kinds (not found, already exists, ...).
fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => Status::not_found(msg),
        Error::AlreadyExists(_) => Status::already_exists(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::Adopting(_) => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn mounts(m: Vec<Mount>) -> Vec<crate::api::types::Mount> {
    m.into_iter()
        .map(|m| crate::api::types::Mount {
            r#type: m.kind.to_string(),
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.seconds, nanos: t.nanos }
}

fn info(i: &Info) -> crate::api::Info {
    crate::api::Info {
        name: i.key.clone(),
        parent: i.parent.clone(),
        kind: match i.kind {
            Kind::View => crate::api::Kind::View,
            Kind::Active => crate::api::Kind::Active,
            Kind::Committed => crate::api::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Whether containerd names an active snapshot as one it unpacks a layer into: its unpacker's
/// `extract-<unique> <chain id>`, behind the `<namespace>/<id>/` its metadata store prefixes.
fn unpack_key(key: &str) -> bool {
    key.starts_with("extract-") || key.splitn(3, '/').nth(2).is_some_and(|k| k.starts_with("extract-"))
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

#[tonic::async_trait]
impl snapshots_server::Snapshots for Service {
    async fn prepare(&self, r: Request<PrepareSnapshotRequest>) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let key = r.key.clone();
        let unpack = unpack_key(&r.key);
        let (m, tree) = self
            .with_adopted(move |s| {
                let m = s.prepare(Kind::Active, &r.key, &r.parent, labels(r.labels.clone()))?;
                Ok((m, s.fs_path(s.get(&r.key)?.id)))
            })
            .await?;
        if unpack {
            self.hash_early(&key, tree);
        }
        Ok(Response::new(PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(&self, r: Request<ViewSnapshotRequest>) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self.with_adopted(move |s| s.prepare(Kind::View, &r.key, &r.parent, labels(r.labels.clone()))).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let r = r.into_inner();
        let m = self.with_adopted(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        // The commit runs as a task of its own, which answers through `answer`: a caller that
        // gives up (the call dropped) neither stops it half way nor leaves its tree unadopted.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move { this.commit_and_adopt(r.into_inner(), answer).await });
        answered.await.map_err(|_| Status::internal("the commit task ended without an answer"))??;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let _ = self.stop_hashing(&r.key).await;
        // An unpack by strata's differ into it (one whose call containerd gave up) is stopped,
        // and the removal waits until nothing writes into the tree.
        let (snapshots, key) = (self.snapshots.clone(), r.key.clone());
        let _ = tokio::task::spawn_blocking(move || {
            while snapshots.lock().unwrap_or_else(|p| p.into_inner()).stop_apply(&key) {
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await;
        let gone = self.with_adopted(move |s| s.remove(&r.key)).await?;
        // Out of snapshots/ already: what a failure here leaves, Cleanup (or the next start) removes.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(gone)).await;
        Ok(Response::new(()))
    }

    async fn stat(&self, r: Request<StatSnapshotRequest>) -> Result<Response<StatSnapshotResponse>, Status> {
        let r = r.into_inner();
        let i = self.with(move |s| s.get(&r.key).map(info)).await?;
        Ok(Response::new(StatSnapshotResponse { info: Some(i) }))
    }

    async fn update(&self, r: Request<UpdateSnapshotRequest>) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let Some(new) = r.info else { return Err(Status::invalid_argument("update without an info")) };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self.with(move |s| s.update(&new.name, labels(new.labels), &paths).map(|i| info(&i))).await?;
        Ok(Response::new(UpdateSnapshotResponse { info: Some(i) }))
    }

    type ListStream = ListStream;

    async fn list(&self, r: Request<ListSnapshotsRequest>) -> Result<Response<ListStream>, Status> {
        let r = r.into_inner();
        if let Some(f) = r.filters.first() {
            return Err(Status::invalid_argument(format!(
                "strata's snapshotter does not implement list filters ({f:?}); list without filters"
            )));
        }
        let all: Vec<crate::api::Info> = self.with(|s| Ok(s.all().map(info).collect())).await?;
        let batches: Vec<_> = all.chunks(100).map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let r = r.into_inner();
        let u = self.with_adopted(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(UsageResponse { size: clamp(u.size), inodes: clamp(u.inodes) }))
    }

    async fn cleanup(&self, _r: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.with(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn policy(tid: libc::pid_t) -> i32 {
        // SAFETY: sched_getscheduler reads the policy of a thread id; no pointers.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// The tree of snapshot `key`.
    fn tree_of(service: &Service, key: &str) -> Result<PathBuf, Error> {
        let s = service.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.fs_path(s.get(key)?.id))
    }

    /// A commit answers before its adoption has shared the tree's files; a View asked at once on
    /// it waits until the adoption has changed the tree (it would hand out a tree being changed).
    #[test]
    fn a_view_asked_right_after_a_commit_waits_for_its_adoption() -> Result<(), Box<dyn std::error::Error>> {
        use snapshots_server::Snapshots as _;
        const FILES: usize = 2000;
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(dir.path())?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        // the same files (content, mode, owner, mtime) in two layers: the second shares the first's
        let layer = |key: &str, name: &str| -> Result<PathBuf, Box<dyn std::error::Error>> {
            let prepare = PrepareSnapshotRequest { key: key.into(), ..Default::default() };
            rt.block_on(service.prepare(Request::new(prepare)))?;
            let fs = tree_of(&service, key)?;
            for i in 0..FILES {
                let path = fs.join(format!("f{i}"));
                std::fs::write(&path, format!("file {i}\n"))?;
                std::fs::File::options()
                    .write(true)
                    .open(&path)?
                    .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(86_400))?;
            }
            let commit = CommitSnapshotRequest { key: key.into(), name: name.into(), ..Default::default() };
            rt.block_on(service.commit(Request::new(commit)))?;
            Ok(fs)
        };
        let first = layer("a", "one")?;
        rt.block_on(service.settle());
        assert_eq!(std::fs::metadata(first.join("f0"))?.nlink(), 2, "the first layer's files are pooled");
        let second = layer("b", "two")?;
        let view = ViewSnapshotRequest { key: "v".into(), parent: "two".into(), ..Default::default() };
        rt.block_on(service.view(Request::new(view)))?;
        let own: Vec<_> = (0..FILES)
            .filter(|i| std::fs::metadata(second.join(format!("f{i}"))).map_or(true, |m| m.nlink() < 3))
            .collect();
        assert!(own.is_empty(), "the view came before the adoption: {} files not shared yet", own.len());
        rt.block_on(service.settle());
        let marks: Vec<_> = [&first, &second]
            .iter()
            .filter_map(|fs| fs.parent())
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("adopting-"))
            .map(|e| e.path())
            .collect();
        assert!(marks.is_empty(), "adoptions over, their marks stay: {marks:?}");
        Ok(())
    }

    /// Waits (up to a minute: the hashing runs in idle time) for `what` of the early hashing of
    /// `key` to hold.
    fn early_until(service: &Service, key: &str, what: &str, ok: impl Fn(&EarlyHashing) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if service.hashing.lock().unwrap_or_else(|p| p.into_inner()).get(key).is_some_and(&ok) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "early hashing of {key}: never {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn hashed(n: usize) -> impl Fn(&EarlyHashing) -> bool {
        move |h| h.hashed.load(Ordering::Relaxed) == n
    }

    fn dozing(h: &EarlyHashing) -> bool {
        h.dozing.load(Ordering::Relaxed)
    }

    /// An unpack that stalls (a pull waiting for its download, in the middle of a file) and then
    /// goes on is hashed early to its end: its hashing dozes while the tree is unchanged and
    /// wakes when it changes.
    #[test]
    fn the_early_hashing_of_a_stalled_unpack_wakes_when_it_goes_on() -> Result<(), Box<dyn std::error::Error>> {
        use snapshots_server::Snapshots as _;
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(dir.path())?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let key = "default/1/extract-1 sha256:00";
        let prepare = PrepareSnapshotRequest { key: key.into(), ..Default::default() };
        rt.block_on(service.prepare(Request::new(prepare)))?;
        let fs = tree_of(&service, key)?;
        std::fs::write(fs.join("first"), "first\n")?;
        // a download that stalled in the middle of a file: that file stays open for writing
        let mut partial = std::fs::File::create(fs.join("partial"))?;
        std::io::Write::write_all(&mut partial, b"part of a file")?;
        early_until(&service, key, "hashed the first file", hashed(1));
        early_until(&service, key, "dozing", dozing);
        std::fs::write(fs.join("second"), "second\n")?;
        early_until(&service, key, "hashed the file written after the stall", hashed(2));
        drop(partial);
        early_until(&service, key, "hashed the file closed after the stall", hashed(3));
        let early = rt.block_on(service.stop_hashing(key)).ok_or("no early hashes")?;
        assert_eq!(early.len(), 3);
        Ok(())
    }

    /// When as many unpacks as are hashed at once have stalled, a new unpack is hashed early
    /// anyway: one stalled unpack's hashing stops, and keeps what it hashed for its commit.
    #[test]
    fn stalled_early_hashings_give_way_to_a_new_unpack_and_keep_their_hashes() -> Result<(), Box<dyn std::error::Error>>
    {
        use snapshots_server::Snapshots as _;
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(dir.path())?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let key = |i: usize| format!("default/{i}/extract-{i} sha256:0{i}");
        let unpack = |i: usize| -> Result<(), Box<dyn std::error::Error>> {
            let prepare = PrepareSnapshotRequest { key: key(i), ..Default::default() };
            rt.block_on(service.prepare(Request::new(prepare)))?;
            std::fs::write(tree_of(&service, &key(i))?.join("file"), format!("layer {i}\n"))?;
            Ok(())
        };
        for i in 0..MAX_EARLY {
            unpack(i)?;
        }
        for i in 0..MAX_EARLY {
            early_until(&service, &key(i), "hashed its file", hashed(1));
            early_until(&service, &key(i), "dozing", dozing);
        }
        unpack(MAX_EARLY)?;
        early_until(&service, &key(MAX_EARLY), "hashed the new unpack's file", hashed(1));
        let stopped: Vec<usize> = {
            let hashing = service.hashing.lock().unwrap_or_else(|p| p.into_inner());
            (0..MAX_EARLY).filter(|i| !hashing[&key(*i)].running()).collect()
        };
        assert_eq!(stopped.len(), 1, "one stalled unpack gives way, not {stopped:?}");
        for i in 0..MAX_EARLY {
            let early = rt.block_on(service.stop_hashing(&key(i))).ok_or("no early hashes")?;
            assert_eq!(early.len(), 1, "the hashes of stalled unpack {i}");
        }
        Ok(())
    }

    /// A commit whose caller gives up before the answer (the call dropped at its first wait) is
    /// still made and its tree still adopted; a view of it comes once that is done.
    #[test]
    fn a_commit_given_up_by_its_caller_is_still_adopted() -> Result<(), Box<dyn std::error::Error>> {
        use snapshots_server::Snapshots as _;
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(dir.path())?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let prepare = PrepareSnapshotRequest { key: "a".into(), ..Default::default() };
        rt.block_on(service.prepare(Request::new(prepare)))?;
        let file = tree_of(&service, "a")?.join("file");
        std::fs::write(&file, "content\n")?;
        // (on a thread of its own, so that a view that never comes fails the test)
        let (tx, rx) = std::sync::mpsc::channel();
        let svc = service.clone();
        std::thread::spawn(move || {
            let run = async {
                let commit = CommitSnapshotRequest { key: "a".into(), name: "one".into(), ..Default::default() };
                let given_up = tokio::select! {
                    biased;
                    _ = svc.commit(Request::new(commit)) => false,
                    _ = std::future::ready(()) => true,
                };
                while svc.snapshots.lock().unwrap_or_else(|p| p.into_inner()).get("one").is_err() {
                    tokio::task::yield_now().await;
                }
                let view = ViewSnapshotRequest { key: "v".into(), parent: "one".into(), ..Default::default() };
                let viewed = svc.view(Request::new(view)).await.map(drop).map_err(|e| e.to_string());
                svc.settle().await;
                viewed.map(|()| given_up)
            };
            let _ = tx.send(rt.block_on(run));
        });
        let done = rx.recv_timeout(Duration::from_secs(20));
        assert!(matches!(done, Ok(Ok(true))), "a view of a commit given up at its first wait: {done:?}");
        assert_eq!(std::fs::metadata(&file)?.nlink(), 2, "the commit given up was not adopted into the pool");
        Ok(())
    }

    /// A commit waiting for the adoptions' lock lifts the thread that holds it with deferred pool
    /// links out of `SCHED_IDLE`; links that start while it still waits run normally from the
    /// start; a links thread that panics leaves no id behind.
    #[test]
    fn a_commit_waiting_for_pool_links_lifts_them_out_of_idle_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(dir.path())?);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let held = rt.block_on(service.take_pooling());

        // a links thread as link_later starts one, holding the lock until told to end
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let linking = service.linking.clone();
        let links = std::thread::spawn(move || {
            let (running, tid) = LinksRunning::start(&linking);
            let _ = ready_tx.send(tid);
            let _ = end_rx.recv();
            drop(running);
            drop(held);
        });
        let tid = ready_rx.recv()?;
        assert_eq!(policy(tid), libc::SCHED_IDLE, "the links start in idle time");

        // a second task waits for the lock: the links thread runs normally from then on
        let waiter = {
            let service = service.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
                drop(rt.block_on(service.take_pooling()));
                Ok::<_, String>(())
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while policy(tid) != libc::SCHED_OTHER {
            assert!(std::time::Instant::now() < deadline, "the waiter never lifted the links thread");
            std::thread::sleep(Duration::from_millis(5));
        }
        // the next links start while that waiter still waits: at normal priority from the start
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let next = {
            let linking = service.linking.clone();
            std::thread::spawn(move || {
                let (running, tid) = LinksRunning::start(&linking);
                let _ = started_tx.send(policy(tid));
                drop(running);
            })
        };
        assert_eq!(started_rx.recv()?, libc::SCHED_OTHER, "links started while a commit waits run normally");
        next.join().map_err(|_| "next links thread panicked")?;
        end_tx.send(())?;
        links.join().map_err(|_| "links thread panicked")?;
        waiter.join().map_err(|_| "waiter panicked")??;
        assert_eq!(*service.linking.lock().unwrap_or_else(|p| p.into_inner()), Linking::default());

        // a links thread that panics leaves no id behind
        let linking = service.linking.clone();
        let panicked = std::thread::spawn(move || {
            let _running = LinksRunning::start(&linking);
            panic!("links failed");
        });
        assert!(panicked.join().is_err());
        assert_eq!(service.linking.lock().unwrap_or_else(|p| p.into_inner()).tid, None);
        Ok(())
    }
}
