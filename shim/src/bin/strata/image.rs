//! `strata image import|pull|ls|inspect|export|rm|du|run`, `strata gc` and `strata fsck`: the image store's
//! commands. Thin: parse, call `layerstore` (and the engine for `image run`), print.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use engine::bundle::Bundle;
use engine::container::{self, CreateOptions};
use engine::state::StateRoot;
use layerstore::Store;

/// The image store's default location.
pub const DEFAULT_STORE: &str = "/var/lib/strata";

/// Where the image store lives.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// Directory of the image store.
    #[arg(long, global = true, default_value = DEFAULT_STORE, env = "STRATA_STORE")]
    pub store: PathBuf,
    /// The most uncompressed bytes one layer may hold (a decompression bomb stops there).
    #[arg(long, global = true, value_name = "BYTES", default_value_t = layerstore::LayerLimits::default().max_bytes)]
    pub max_layer_bytes: u64,
    /// The most entries (files, directories, links) one layer may hold.
    #[arg(long, global = true, value_name = "N", default_value_t = layerstore::LayerLimits::default().max_entries)]
    pub max_layer_entries: u64,
}

impl StoreArg {
    fn open(&self) -> Result<Store> {
        let store =
            Store::open(&self.store).with_context(|| format!("opening the image store {}", self.store.display()))?;
        let limits = layerstore::LayerLimits { max_bytes: self.max_layer_bytes, max_entries: self.max_layer_entries };
        Ok(store.with_layer_limits(limits))
    }
}

/// `strata image ...`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout directory, OCI archive or `docker save` archive.
    Import {
        /// The directory or archive.
        source: PathBuf,
        /// Name the image (for a source holding one image).
        #[arg(long)]
        name: Option<String>,
        /// Keep the compressed layer blobs, so that `image export` writes the image with every
        /// original digest. By default they are removed once the layers are unpacked and
        /// verified, and export rebuilds each layer from its snapshot (same diff IDs and config,
        /// layers compressed again, so a new manifest digest).
        #[arg(long)]
        keep_blobs: bool,
    },
    /// Pull an image from a registry (HTTPS; plain HTTP for localhost and 127.0.0.1, or with
    /// --plain-http). Without --user, credentials come from docker's and the containers tools'
    /// auth files and credential helpers.
    Pull {
        /// `[host[:port]/]repository[:tag][@digest]`, as docker reads it (`busybox` is Docker
        /// Hub's `library/busybox:latest`), e.g. `127.0.0.1:5000/busybox:latest`.
        reference: String,
        /// Credentials for the registry or its token service.
        #[arg(long, value_name = "USER:PASS")]
        user: Option<String>,
        /// Use plain HTTP for a registry that is not on this host.
        #[arg(long)]
        plain_http: bool,
        /// Use HTTPS without verifying the registry's certificate.
        #[arg(long)]
        insecure_skip_tls_verify: bool,
        /// A PEM file of CA certificates to trust besides the system's (repeatable).
        #[arg(long, value_name = "PEM")]
        ca_file: Vec<PathBuf>,
        /// Where registry mirrors are configured, containerd's way (`<dir>/<registry>/hosts.toml`).
        #[arg(long, value_name = "DIR", default_value = layerstore::hosts::DEFAULT_DIR)]
        hosts_dir: PathBuf,
        /// Refused: say which of --plain-http and --insecure-skip-tls-verify is meant.
        #[arg(long, hide = true)]
        insecure: bool,
        /// Store the image under this name instead of the reference.
        #[arg(long)]
        name: Option<String>,
        /// Blobs downloaded at a time.
        #[arg(long, default_value_t = 3)]
        parallel: usize,
        /// Keep the compressed layer blobs (see `image import --keep-blobs`).
        #[arg(long)]
        keep_blobs: bool,
    },
    /// List images.
    Ls {
        /// Print only the names.
        #[arg(short, long)]
        quiet: bool,
        /// table or json.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Print an image's record and OCI config as JSON.
    Inspect {
        /// The image name.
        image: String,
    },
    /// Write an image as an OCI layout directory with its original digests.
    Export {
        /// The image name.
        image: String,
        /// The directory to write.
        dest: PathBuf,
    },
    /// Remove images, then collect what nothing uses any more.
    Rm {
        /// The image names.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print the logical size, bytes on disk and what each kind of dedup saved.
    Du {
        /// table or json.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Run a container from an image; its root file system is removed when it exits.
    Run {
        /// Accepted for docker compatibility: the container and its root file system are always removed on exit.
        #[arg(long)]
        rm: bool,
        /// Allocate a pseudo-terminal.
        #[arg(short, long)]
        tty: bool,
        /// Set an environment variable (KEY=VALUE), over the image's.
        #[arg(short, long)]
        env: Vec<String>,
        /// The container id (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// The image name.
        image: String,
        /// The command, replacing the image's CMD (its ENTRYPOINT stays).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// `strata gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArg,
}

/// `strata fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Remove corrupt blobs and pool files and crashed writers' temp files.
    #[arg(long)]
    pub repair: bool,
}

fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[u]) }
}

/// Runs an image subcommand.
pub fn image(state_root: &Path, args: &ImageArgs) -> Result<i32> {
    let store = args.store.open()?;
    match &args.command {
        ImageCommand::Import { source, name, keep_blobs } => {
            let started = std::time::Instant::now();
            let opts = layerstore::ImportOptions { drop_layer_blobs: !*keep_blobs };
            for r in store.import_with(source, name.as_deref(), opts)? {
                println!("{}\t{}\t{} layers", r.name, r.manifest, r.layers.len());
            }
            eprintln!("imported in {:.2} s", started.elapsed().as_secs_f64());
        }
        ImageCommand::Pull {
            reference,
            user,
            plain_http,
            insecure_skip_tls_verify,
            ca_file,
            hosts_dir,
            insecure,
            name,
            parallel,
            keep_blobs,
        } => {
            if *insecure {
                bail!(
                    "--insecure: say which is meant: --plain-http (HTTP, no TLS) or --insecure-skip-tls-verify (HTTPS without checking the certificate)"
                );
            }
            let credentials = match user {
                Some(u) => match u.split_once(':') {
                    Some((user, pass)) => Some((user.to_string(), pass.to_string())),
                    None => bail!("--user {u:?}: expected USER:PASS"),
                },
                None => None,
            };
            let opts = layerstore::PullOptions {
                credentials,
                plain_http: *plain_http,
                skip_tls_verify: *insecure_skip_tls_verify,
                ca_files: ca_file.clone(),
                hosts_dir: Some(hosts_dir.clone()),
                parallel: *parallel,
                name: name.clone(),
                drop_layer_blobs: !*keep_blobs,
                ..layerstore::PullOptions::default()
            };
            let started = std::time::Instant::now();
            let report = store.pull(reference, &opts, &crate::progress::Bars::new())?;
            let r = &report.record;
            println!("{}\t{}\t{} layers", r.name, r.manifest, r.layers.len());
            eprintln!(
                "pulled in {:.2} s: {} blobs fetched ({}), {} already present",
                started.elapsed().as_secs_f64(),
                report.blobs_fetched,
                human(report.bytes_fetched),
                report.blobs_present
            );
        }
        ImageCommand::Ls { quiet, format } => {
            let images = store.images()?;
            if *quiet {
                images.iter().for_each(|i| println!("{}", i.name));
            } else if format == "json" {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                let mut out = String::from("NAME\tMANIFEST\tLAYERS\n");
                for i in &images {
                    out.push_str(&format!("{}\t{}\t{}\n", i.name, &i.manifest.to_string()[..19], i.layers.len()));
                }
                print!("{}", crate::demo::align_columns(&out));
            }
        }
        ImageCommand::Inspect { image } => {
            let record = store.image(image)?;
            let config = store.image_config(image)?;
            let doc = serde_json::json!({"image": record, "config": config});
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        ImageCommand::Export { image, dest } => store.export(image, dest)?,
        ImageCommand::Rm { images } => {
            for name in images {
                println!("removed {}", store.remove_image(name)?.name);
            }
            print_gc(&store.gc()?);
        }
        ImageCommand::Du { format } => {
            let du = store.du()?;
            if format == "json" {
                let doc = serde_json::json!({
                    "images": du.images, "snapshots": du.snapshots, "logicalBytes": du.logical_bytes,
                    "onDiskBytes": du.on_disk_bytes, "blobBytes": du.blob_bytes, "splitBytes": du.split_bytes,
                    "savedByLayerDedup": du.saved_by_layer_dedup, "savedByFileDedup": du.saved_by_file_dedup,
                    "containerdSnapshots": du.containerd_snapshots, "containerdBytes": du.containerd_bytes,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("images:                {}", du.images);
                println!("snapshots:             {}", du.snapshots);
                println!("logical size:          {}", human(du.logical_bytes));
                println!("on disk:               {}", human(du.on_disk_bytes));
                println!("  compressed blobs:    {}", human(du.blob_bytes));
                println!("  tar splits:          {}", human(du.split_bytes));
                println!("saved by layer dedup:  {}", human(du.saved_by_layer_dedup));
                println!("saved by file dedup:   {}", human(du.saved_by_file_dedup));
                if du.containerd_snapshots > 0 {
                    println!(
                        "containerd snapshots:  {} (strata snapshotter; {} outside the pool)",
                        du.containerd_snapshots,
                        human(du.containerd_bytes)
                    );
                }
            }
        }
        ImageCommand::Run { rm: _, tty, env, name, image, command } => {
            engine::seal::reexec_sealed().context("protecting the runtime binary")?;
            let req = ImageRun {
                image: image.clone(),
                command: command.clone(),
                env: env.clone(),
                name: name.clone(),
                tty: *tty,
                memory: None,
            };
            return run(state_root, &store, &req);
        }
    }
    Ok(0)
}

fn print_gc(r: &layerstore::GcReport) {
    println!(
        "gc: removed {} blobs, {} snapshots, {} pooled files, {} temp files",
        r.blobs, r.snapshots, r.pool_files, r.temps
    );
}

/// The owner recorded in an `image run` claim: the engine state root that holds the container.
fn owner(state_root: &Path) -> String {
    format!("strata state root {}", std::path::absolute(state_root).unwrap_or(state_root.to_path_buf()).display())
}

/// `strata gc`: first drops the root file systems of `image run` containers that this state root no
/// longer knows (their `strata` was killed before it could clean up), then collects what nothing uses.
pub fn gc(state_root: &Path, args: &GcArgs) -> Result<i32> {
    let store = args.store.open()?;
    let live = StateRoot::new(state_root)?.list()?;
    for c in store.containers()? {
        // A claim younger than a minute may belong to an `image run` still creating its container.
        let age = std::fs::metadata(store.root().join("containers").join(&c.id).join("ref.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if c.owner == owner(state_root) && !live.contains(&c.id) && age > std::time::Duration::from_secs(60) {
            store.remove_rootfs(&c.id)?;
            println!("removed the root file system of exited container {}", c.id);
        }
    }
    print_gc(&store.gc()?);
    Ok(0)
}

/// `strata fsck`: exit status 1 when something is wrong (and not repaired).
pub fn fsck(args: &FsckArgs) -> Result<i32> {
    let store = args.store.open()?;
    let r = store.fsck(args.repair)?;
    for p in &r.problems {
        println!("{p}");
    }
    for why in &r.unrepaired {
        println!("not repaired: {why}");
    }
    println!(
        "fsck: {} blobs, {} snapshots and {} committed containerd snapshots ({} files through the pool, {} outside it; {} layers rebuilt from tar splits), {} pooled files checked; {} problems, {} repaired",
        r.blobs_checked,
        r.snapshots_checked,
        r.containerd_snapshots_checked,
        r.files_checked,
        r.files_unverified,
        r.splits_checked,
        r.pool_checked,
        r.problems.len(),
        r.repaired
    );
    if !args.repair {
        return Ok(if r.is_clean() { 0 } else { 1 });
    }
    // The exit status after a repair says whether the store is now clean.
    let after = store.fsck(false)?;
    for p in &after.problems {
        println!("still: {p}");
    }
    Ok(if after.is_clean() { 0 } else { 1 })
}

/// The largest `/etc/passwd` or `/etc/group` read from an image.
const ACCOUNT_FILE_LIMIT: u64 = 4 << 20;

/// Looks `name` up in the image's `/etc/passwd` or `/etc/group` (field 3 is the id, 4 the
/// primary group). The file is the image's own: resolved inside the root file system (a link to
/// a host file stays inside it), a regular file of at most [`ACCOUNT_FILE_LIMIT`] bytes; a
/// missing one has no names, anything else is an error.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Result<Option<(u32, Option<u32>)>> {
    let bytes = match engine::sys::read_in_root(rootfs, Path::new(file), ACCOUNT_FILE_LIMIT) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("the image's /{file}: {e}"),
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() != Some(&name) {
            return None;
        }
        Some((f.get(2)?.parse().ok()?, f.get(3).and_then(|g| g.parse().ok())))
    }))
}

/// The image's `User` (`uid`, `name`, `uid:gid`, `name:group`) as ids, names resolved in the image.
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup(rootfs, "etc/passwd", u)?.and_then(|(_, g)| g)),
        Err(_) => {
            lookup(rootfs, "etc/passwd", u)?.with_context(|| format!("image user {u:?} is not in /etc/passwd"))?
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup(rootfs, "etc/group", g)?.with_context(|| format!("image group {g:?} is not in /etc/group"))?.0
            }
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Builds the bundle from the image config and runs it; the root file system goes when it exits.
/// What `strata run IMAGE` (or `strata image run`) runs.
#[derive(Debug, Clone)]
pub struct ImageRun {
    /// The image name or digest.
    pub image: String,
    /// The command, replacing the image's CMD.
    pub command: Vec<String>,
    /// Extra environment (KEY=VALUE).
    pub env: Vec<String>,
    /// The container id.
    pub name: Option<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
}

/// `strata run IMAGE ...`: opens the store at `store` and runs the image.
/// Whether the store at `store` holds an image named `name`.
pub fn has_image(store: &Path, name: &str) -> bool {
    store.exists() && Store::open(store).is_ok_and(|s| s.image_config(name).is_ok())
}

pub fn run_image(state_root: &Path, store: &Path, req: &ImageRun) -> Result<i32> {
    let store = Store::open(store).with_context(|| format!("opening the image store {}", store.display()))?;
    run(state_root, &store, req)
}

fn run(state_root: &Path, store: &Store, req: &ImageRun) -> Result<i32> {
    let (image, command, extra_env, tty) = (req.image.as_str(), &req.command, &req.env, req.tty);
    let config = store.image_config(image)?;
    // Refuse limits the host cannot enforce before anything is made.
    let resources = req.memory.map(|m| serde_json::json!({"memory": {"limit": m}}));
    if let Some(r) = &resources {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(r.clone())?;
        cgroups::Hierarchy::detect()?.check_resources(&r)?;
    }
    let id = req.name.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("strata-{}-{nanos:x}", std::process::id())
    });
    let rootfs = store.create_rootfs(&id, image, &owner(state_root))?;
    let bundle_dir = rootfs.parent().map(Path::to_path_buf).unwrap_or_default();
    let result = (|| {
        let c = config.config().clone().unwrap_or_default();
        let mut args = c.entrypoint().clone().unwrap_or_default();
        if command.is_empty() {
            args.extend(c.cmd().clone().unwrap_or_default());
        } else {
            args.extend(command.iter().cloned());
        }
        if args.is_empty() {
            bail!("image {image} has no entrypoint or cmd: give a command");
        }
        let mut env = c.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        for e in extra_env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        let (uid, gid) = resolve_user(&rootfs, c.user().as_deref().unwrap_or(""))?;
        let mut spec = engine::spec::default_config(&args, tty);
        spec["process"]["env"] = serde_json::json!(env);
        spec["process"]["cwd"] =
            serde_json::json!(c.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or("/".into()));
        spec["process"]["user"] = serde_json::json!({"uid": uid, "gid": gid});
        spec["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        spec["hostname"] = serde_json::json!(id.chars().take(63).collect::<String>());
        if let Some(r) = &resources {
            spec["linux"]["resources"]["memory"] = r["memory"].clone();
        }
        let file = bundle_dir.join("config.json");
        std::fs::write(&file, serde_json::to_string_pretty(&spec)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let bundle = Bundle::load(&bundle_dir)?;
        let root = StateRoot::new(state_root)?;
        Ok(container::run(&root, &id, &bundle, &CreateOptions::default(), false)?)
    })();
    let removed = store.remove_rootfs(&id);
    let code = result?;
    removed?;
    Ok(code)
}
