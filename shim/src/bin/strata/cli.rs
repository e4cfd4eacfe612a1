//! Command-line definitions (runc's commands, flags and output) and their dispatch.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use engine::bundle::Bundle;
use engine::container::{self, CreateOptions};
use engine::exec::{self, ExecRequest};
use engine::state::StateRoot;
use std::path::PathBuf;

/// strata: an OCI container runtime.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = engine::state::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// The systemd cgroup driver: each container's cgroup is a transient scope unit that
    /// systemd creates and removes; cgroupsPath reads "slice:prefix:name" (default
    /// "system.slice:strata:<id>").
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by create and run.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The container id.
    pub id: String,
    /// The bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub flags: CreateFlags,
}

/// The runc flags `create` and `run` share.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the init's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Pass this many extra file descriptors (from 3 on) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Refused: strata always enters the root with pivot_root (runc's --no-pivot, for ramdisk
    /// roots, uses chroot, which a process can escape).
    #[arg(long)]
    pub no_pivot: bool,
    /// Unix socket that receives a pidfd of the container's init.
    #[arg(long)]
    pub pidfd_socket: Option<PathBuf>,
    /// Keep the runtime's session keyring instead of a new one for the container.
    #[arg(long)]
    pub no_new_keyring: bool,
}

/// Flags of `run` (bundle form and image form).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The bundle directory (bundle form; default: the current directory).
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub flags: CreateFlags,
    /// Return once the container runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container (stopped) after it exits; `delete` removes it.
    #[arg(long)]
    pub keep: bool,
    /// runc's opt-out of making itself a subreaper: strata never does (accepted, nothing to do).
    #[arg(long)]
    pub no_subreaper: bool,
    /// Image form: remove the container when it exits (always done; accepted for docker users).
    #[arg(long)]
    pub rm: bool,
    /// Image form: keep stdin open (the container always gets the runtime's stdin).
    #[arg(short, long)]
    pub interactive: bool,
    /// Image form: allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Image form: set an environment variable (KEY=VALUE), over the image's.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Image form: the container id (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Image form: memory limit (bytes, or with a k, m or g suffix).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Image form: directory of the image store.
    #[arg(long, default_value = crate::image::DEFAULT_STORE, env = "STRATA_STORE")]
    pub store: PathBuf,
    /// ID (bundle form), or IMAGE [COMMAND...] (image form).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl RunArgs {
    fn image_flags(&self) -> bool {
        self.rm || self.interactive || self.tty || !self.env.is_empty() || self.name.is_some() || self.memory.is_some()
    }

    /// Whether this is the image form.
    pub fn is_image_form(&self) -> bool {
        let has_bundle = self.bundle.is_some() || std::path::Path::new("config.json").exists();
        self.image_flags() || self.args.len() > 1 || !has_bundle
    }

    /// `strata run NAME` with nothing else and no config.json here: runc's form missing its
    /// bundle, or an image of the store; which one is decided by the store.
    fn is_ambiguous(&self) -> bool {
        !self.image_flags() && self.args.len() == 1 && self.bundle.is_none()
    }
}

/// Parses a docker-style size: `1048576`, `512k`, `64m`, `1g`.
pub fn parse_size(s: &str) -> Result<i64> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last() {
        Some('k') => (&lower[..lower.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    let n: i64 =
        num.parse().with_context(|| format!("--memory {s:?}: expected a size such as 67108864, 512k, 64m or 1g"))?;
    n.checked_mul(mult).with_context(|| format!("--memory {s:?} is too large"))
}

/// `exec`'s flags (runc's).
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The container id.
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// JSON file describing the process (runtime-spec `process`); what it leaves out of
    /// capabilities, noNewPrivileges, rlimits, scheduling and labels comes from the container.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container (default: the config's).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variables (KEY=VALUE), over the config's.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// User as UID[:GID] (the gid stays the config's unless given).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids (added to the config's).
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the process's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Add a capability (to the bounding, effective and permitted sets).
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set (or with =false clear) no_new_privs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_new_privs: Option<bool>,
    /// AppArmor profile for the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// SELinux label for the process.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Run the process in this existing cgroup below the container's.
    #[arg(long)]
    pub cgroup: Vec<String>,
    /// Exec into a paused container as well.
    #[arg(long)]
    pub ignore_paused: bool,
    /// Unix socket that receives a pidfd of the process.
    #[arg(long)]
    pub pidfd_socket: Option<PathBuf>,
    /// Pass this many extra file descriptors.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}

/// `update`'s flags (runc's). Sizes take -1 (unlimited), a byte count or 512k/64m/1g.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The container id.
    pub id: String,
    /// JSON file with runtime-spec `linux.resources` ("-" for stdin); the other flags are then
    /// ignored, as with runc.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Block I/O weight (10 to 1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds (-1 for no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPU burst in microseconds.
    #[arg(long)]
    pub cpu_burst: Option<u64>,
    /// SCHED_IDLE for the cgroup (0 or 1).
    #[arg(long)]
    pub cpu_idle: Option<i64>,
    /// Realtime period (refused: cgroup v2 has no realtime bandwidth).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime (refused: cgroup v2 has no realtime bandwidth).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs the container may use (e.g. 0-2,4).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_limit)]
    pub memory: Option<i64>,
    /// Memory soft limit (memory.low).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_limit)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap limit.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_limit)]
    pub memory_swap: Option<i64>,
    /// Maximum number of processes (-1 for no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Kernel memory limit (refused: cgroup v2 has none).
    #[arg(long, allow_hyphen_values = true, hide = true)]
    pub kernel_memory: Option<String>,
    /// Kernel TCP memory limit (refused: cgroup v2 has none).
    #[arg(long, allow_hyphen_values = true, hide = true)]
    pub kernel_memory_tcp: Option<String>,
    /// Intel RDT L3 cache schema (refused: Intel RDT is not implemented).
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (refused: Intel RDT is not implemented).
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
}

/// A size flag: -1, a byte count, or a count with k, m or g.
fn parse_limit(s: &str) -> std::result::Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    parse_size(s).map_err(|e| format!("{e:#}"))
}

/// A Go-style duration as runc takes it: 5s, 500ms, 1m, 1h, 250us.
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 5s or 500ms"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ns, us, ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses `UID[:GID]`.
fn parse_user(u: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match u.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (u, None),
    };
    let uid = uid.parse::<u32>().with_context(|| format!("--user {u:?}: bad uid (expected UID[:GID])"))?;
    let gid = gid.map(|g| g.parse::<u32>().with_context(|| format!("--user {u:?}: bad gid"))).transpose()?;
    Ok((uid, gid))
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container; its program waits for `start`.
    Create(CreateArgs),
    /// Run the program of a created container.
    Start {
        /// The container id.
        id: String,
    },
    /// Create and start a container and wait for it (unless --detach).
    ///
    /// Two forms: `strata run [--bundle DIR] ID` runs a bundle as runc does; `strata run [--rm]
    /// [-it] [-e K=V] [--name N] [--memory M] IMAGE [COMMAND...]` runs an image from the store.
    /// The image form is chosen when an image flag or a command is given, or when there is no
    /// bundle (no --bundle and no config.json in the current directory).
    Run(Box<RunArgs>),
    /// Print the runtime-spec state of a container as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal to a container's init (default SIGTERM).
    Kill {
        /// The container id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container and everything it holds.
    Delete {
        /// The container id.
        id: String,
        /// Kill it first if it runs.
        #[arg(short, long)]
        force: bool,
    },
    /// Run a process in a running container.
    Exec(Box<ExecArgs>),
    /// List the processes of a container.
    Ps {
        /// The container id.
        id: String,
        /// table or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Options passed to ps(1) for the table.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause {
        /// The container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// The container id.
        id: String,
    },
    /// Change the resource limits of a running container (merged with its current ones).
    Update(Box<UpdateArgs>),
    /// Print what this runtime supports (runtime-spec features document).
    Features,
    /// Print a container's events as JSON lines: statistics every interval, OOM kills.
    Events {
        /// The container id.
        id: String,
        /// Print one statistics event and exit.
        #[arg(long)]
        stats: bool,
        /// How often statistics are printed (e.g. 5s, 500ms, 1m).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: std::time::Duration,
    },
    /// Checkpoint a running container (refused: strata has no CRIU support).
    Checkpoint {
        /// Everything runc's checkpoint takes.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Restore a container from a checkpoint (refused: strata has no CRIU support).
    Restore {
        /// Everything runc's restore takes.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a default config.json.
    Spec {
        /// Where to write it.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A configuration for an unprivileged user (user namespace).
        #[arg(long)]
        rootless: bool,
    },
    /// Build a small image, run a container from it and print its output and start time.
    Demo,
    /// Manage images: import, pull, ls, inspect, export, rm, du, run.
    Image(crate::image::ImageArgs),
    /// Remove blobs, snapshots and pooled files that no image or container uses.
    Gc(crate::image::GcArgs),
    /// Verify every blob, snapshot and pooled file of the image store.
    Fsck(crate::image::FsckArgs),
    /// Drive the containerd shim without containerd: `strata shim run --bundle DIR ID`.
    Shim(crate::shim::ShimArgs),
    /// Serve containerd's snapshots API from the image store: runs `strata-snapshotter` (beside
    /// this binary, else on the PATH) with these arguments (`--address SOCKET`, `--store DIR`).
    Snapshotter {
        /// strata-snapshotter's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn state_root(cli: &Cli) -> Result<StateRoot> {
    Ok(StateRoot::new(&cli.root)?)
}

/// Runs the command; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run(_) | Command::Exec(_) | Command::Demo | Command::Image(_)
    ) {
        engine::seal::reexec_sealed().context("protecting the runtime binary")?;
        if let Some(took) = engine::seal::since_reexec() {
            tracing::debug!(
                "step re-execution from a read-only view of the binary: {:.3} ms",
                took.as_secs_f64() * 1e3
            );
        }
    }
    match &cli.command {
        Command::Create(a) => {
            let root = state_root(&cli)?;
            let bundle = Bundle::load(&a.bundle)?;
            let created =
                container::create(&root, &a.id, &bundle, &create_options(&a.flags, cli.systemd_cgroup)?, false)?;
            drop(created);
            Ok(0)
        }
        Command::Start { id } => {
            container::start(&state_root(&cli)?, id)?;
            Ok(0)
        }
        Command::Run(r) if r.is_image_form() => {
            if r.is_ambiguous() && !crate::image::has_image(&r.store, &r.args[0]) {
                let here = std::env::current_dir().unwrap_or_default();
                bail!(
                    "no config.json in {}: `strata run ID` runs the bundle there (write one with `strata spec`, or give --bundle DIR); and the store {} has no image named {:?}",
                    here.display(),
                    r.store.display(),
                    r.args[0]
                );
            }
            if r.detach {
                bail!("run IMAGE: --detach is not supported yet; run it in the foreground");
            }
            let memory = r.memory.as_deref().map(parse_size).transpose()?;
            let req = crate::image::ImageRun {
                image: r.args[0].clone(),
                command: r.args[1..].to_vec(),
                env: r.env.clone(),
                name: r.name.clone(),
                tty: r.tty,
                memory,
            };
            crate::image::run_image(&cli.root, &r.store, &req)
        }
        Command::Run(r) => {
            let root = state_root(&cli)?;
            let id = &r.args[0];
            let bundle = Bundle::load(r.bundle.as_deref().unwrap_or(std::path::Path::new(".")))?;
            let opts = create_options(&r.flags, cli.systemd_cgroup)?;
            if r.detach {
                container::create(&root, id, &bundle, &opts, false)?;
                container::start(&root, id)?;
                return Ok(0);
            }
            Ok(container::run(&root, id, &bundle, &opts, r.keep)?)
        }
        Command::State { id } => {
            let st = container::oci_state(&state_root(&cli)?, id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
            Ok(0)
        }
        Command::Kill { id, signal, all } => {
            let sig = engine::signals::parse_signal(signal)?;
            container::kill(&state_root(&cli)?, id, sig, *all)?;
            Ok(0)
        }
        Command::Delete { id, force } => {
            let root = state_root(&cli)?;
            match container::delete(&root, id, *force) {
                // runc succeeds on a missing container only with --force.
                Err(engine::Error::NotFound(_)) if *force => Ok(0),
                r => r.map(|_| 0).map_err(Into::into),
            }
        }
        Command::Exec(x) => {
            let root = state_root(&cli)?;
            let st = root.load(&x.id)?;
            let config = engine::bundle::parse_config(&st.bundle.join("config.json"))?;
            let base = config.process().as_ref().context("config.json: process: missing")?;
            let process = match &x.process {
                Some(path) => {
                    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    exec::merge_process(&data, Some(base), &path.display().to_string())?
                }
                None => {
                    let overrides = exec::ExecOverrides {
                        args: x.command.clone(),
                        cwd: x.cwd.clone(),
                        env: x.env.clone(),
                        tty: x.tty,
                        user: x.user.as_deref().map(parse_user).transpose()?,
                        additional_gids: x.additional_gids.clone(),
                        caps: x.cap.clone(),
                        no_new_privs: x.no_new_privs,
                        apparmor: x.apparmor.clone(),
                        process_label: x.process_label.clone(),
                    };
                    exec::process_from_config(base, &overrides)?
                }
            };
            if x.cgroup.len() > 1 {
                bail!("--cgroup: cgroup v2 takes one path (given {})", x.cgroup.len());
            }
            let req = ExecRequest {
                process,
                detach: x.detach,
                opts: CreateOptions {
                    console_socket: x.console_socket.clone(),
                    preserve_fds: x.preserve_fds,
                    pid_file: x.pid_file.clone(),
                    no_new_keyring: false,
                    pidfd_socket: x.pidfd_socket.clone(),
                    systemd_cgroup: false,
                },
                sub_cgroup: x.cgroup.first().cloned(),
                ignore_paused: x.ignore_paused,
            };
            Ok(exec::exec(&root, &x.id, &req)?)
        }
        Command::Ps { id, format, ps_args } => {
            let root = state_root(&cli)?;
            let pids = container::pids(&root, id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
                return Ok(0);
            }
            print_ps_table(&pids, ps_args)?;
            Ok(0)
        }
        Command::List { format, quiet } => {
            let root = state_root(&cli)?;
            let mut states = Vec::new();
            for id in root.list()? {
                if let Ok(s) = container::oci_state(&root, &id) {
                    states.push(s);
                }
            }
            if *quiet {
                for s in &states {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&states)?);
            } else {
                let mut out = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n");
                for s in &states {
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created,
                        s.owner
                    ));
                }
                print!("{}", crate::demo::align_columns(&out));
            }
            Ok(0)
        }
        Command::Pause { id } => {
            container::pause(&state_root(&cli)?, id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            container::resume(&state_root(&cli)?, id)?;
            Ok(0)
        }
        Command::Update(u) => {
            let resources = update_resources(u)?;
            container::update(&state_root(&cli)?, &u.id, &resources)?;
            Ok(0)
        }
        Command::Events { id, stats, interval } => {
            use std::io::Write;
            let root = state_root(&cli)?;
            let mut out = std::io::stdout().lock();
            engine::events::watch(&root, id, *interval, *stats, |ev| {
                let line = serde_json::to_string(ev).map_err(|e| engine::Error::Invalid(e.to_string()))?;
                writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| engine::Error::io("writing an event", e))
            })?;
            Ok(0)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => {
            bail!("checkpoint and restore need CRIU, which strata does not support")
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&engine::features::document())?);
            Ok(0)
        }
        Command::Spec { bundle, rootless } => {
            let file = bundle.join("config.json");
            if file.exists() {
                bail!("{}: already exists; remove it first", file.display());
            }
            let mut config = engine::spec::default_config(&["sh".to_string()], true);
            if *rootless {
                engine::spec::make_rootless(
                    &mut config,
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                );
            }
            std::fs::write(&file, serde_json::to_string_pretty(&config)? + "\n")
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(0)
        }
        Command::Demo => crate::demo::run(&state_root(&cli)?),
        Command::Snapshotter { args } => {
            use std::os::unix::process::CommandExt;
            const NAME: &str = "strata-snapshotter";
            let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(NAME)));
            let bin = beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(NAME));
            let err = std::process::Command::new(&bin).args(args).exec();
            bail!("running {}: {err} (it is built by `cargo build --release -p strata-snapshotter`)", bin.display())
        }
        Command::Image(a) => crate::image::image(&cli.root, a),
        Command::Gc(a) => crate::image::gc(&cli.root, a),
        Command::Fsck(a) => crate::image::fsck(a),
        Command::Shim(a) => crate::shim::shim(a, cli.debug),
    }
}

/// The resources an `update` asks for: the `-r` document, or runc's flags.
fn update_resources(u: &UpdateArgs) -> Result<oci_spec::runtime::LinuxResources> {
    use serde_json::{Value, json};
    if u.kernel_memory.is_some() || u.kernel_memory_tcp.is_some() {
        bail!("--kernel-memory and --kernel-memory-tcp: cgroup v2 has no kernel memory limit");
    }
    if u.l3_cache_schema.is_some() || u.mem_bw_schema.is_some() {
        bail!("--l3-cache-schema and --mem-bw-schema: Intel RDT is not implemented by strata");
    }
    if let Some(p) = &u.resources {
        let data = if p.as_os_str() == "-" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut data).context("reading stdin")?;
            data
        } else {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        };
        return serde_json::from_slice(&data).with_context(|| format!("{}: invalid linux.resources JSON", p.display()));
    }
    let mut r = json!({});
    let mut set = |section: &str, key: &str, v: Value| {
        if r.get(section).is_none() {
            r[section] = json!({});
        }
        r[section][key] = v;
    };
    if let Some(v) = u.blkio_weight {
        set("blockIO", "weight", json!(v));
    }
    if let Some(v) = u.cpu_period {
        set("cpu", "period", json!(v));
    }
    if let Some(v) = u.cpu_quota {
        set("cpu", "quota", json!(v));
    }
    if let Some(v) = u.cpu_share {
        set("cpu", "shares", json!(v));
    }
    if let Some(v) = u.cpu_burst {
        set("cpu", "burst", json!(v));
    }
    if let Some(v) = u.cpu_idle {
        set("cpu", "idle", json!(v));
    }
    if let Some(v) = u.cpu_rt_period {
        set("cpu", "realtimePeriod", json!(v));
    }
    if let Some(v) = u.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", json!(v));
    }
    if let Some(v) = &u.cpuset_cpus {
        set("cpu", "cpus", json!(v));
    }
    if let Some(v) = &u.cpuset_mems {
        set("cpu", "mems", json!(v));
    }
    if let Some(v) = u.memory {
        set("memory", "limit", json!(v));
    }
    if let Some(v) = u.memory_reservation {
        set("memory", "reservation", json!(v));
    }
    if let Some(v) = u.memory_swap {
        set("memory", "swap", json!(v));
    }
    if let Some(v) = u.pids_limit {
        set("pids", "limit", json!(v));
    }
    serde_json::from_value(r).context("invalid resources")
}

fn create_options(a: &CreateFlags, systemd_cgroup: bool) -> Result<CreateOptions> {
    if a.no_pivot {
        bail!("--no-pivot is not supported: strata always enters the root with pivot_root (chroot can be escaped)");
    }
    Ok(CreateOptions {
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        pid_file: a.pid_file.clone(),
        no_new_keyring: a.no_new_keyring,
        pidfd_socket: a.pidfd_socket.clone(),
        systemd_cgroup,
    })
}

fn print_ps_table(pids: &[i32], ps_args: &[String]) -> Result<()> {
    let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
    let out = std::process::Command::new("ps").args(&args).output().context("running ps")?;
    if !out.status.success() {
        bail!("ps {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header.split_whitespace().position(|h| h == "PID").context("ps output has no PID column")?;
    println!("{header}");
    for line in lines {
        let pid: Option<i32> = line.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_style_invocations_parse() {
        let c = Cli::try_parse_from([
            "strata",
            "--root",
            "/r",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--console-socket",
            "/s",
            "id1",
        ])
        .unwrap();
        assert!(
            matches!(c.command, Command::Create(ref a) if a.id == "id1" && a.bundle.as_path() == std::path::Path::new("/b"))
        );
        let c = Cli::try_parse_from(["strata", "exec", "-t", "id1", "sh", "-c", "echo hi"]).unwrap();
        assert!(matches!(c.command, Command::Exec(ref x) if x.command.len() == 3 && x.tty && x.no_new_privs.is_none()));
        let c = Cli::try_parse_from(["strata", "exec", "--no-new-privs", "-u", "5", "id1", "true"]).unwrap();
        assert!(matches!(c.command, Command::Exec(ref x) if x.no_new_privs == Some(true)));
        assert_eq!(parse_user("5").unwrap(), (5, None));
        assert_eq!(parse_user("5:7").unwrap(), (5, Some(7)));
        assert!(parse_user("x").is_err());
        let c = Cli::try_parse_from(["strata", "run", "--bundle", "/b", "id1"]).unwrap();
        assert!(matches!(c.command, Command::Run(ref r) if !r.is_image_form() && r.args == ["id1"]));
        let c = Cli::try_parse_from(["strata", "run", "--rm", "-it", "-e", "A=b", "busybox", "sh", "-c", "echo hi"])
            .unwrap();
        assert!(matches!(c.command, Command::Run(ref r) if r.is_image_form() && r.tty && r.args.len() == 4));
        let c = Cli::try_parse_from(["strata", "image", "pull", "--user", "u:p", "--plain-http", "reg.lan/app:v1"])
            .unwrap();
        assert!(matches!(c.command, Command::Image(ref a) if matches!(a.command,
            crate::image::ImageCommand::Pull { ref reference, ref user, plain_http: true, parallel: 3, .. }
                if reference == "reg.lan/app:v1" && user.as_deref() == Some("u:p"))));
        let c = Cli::try_parse_from(["strata", "kill", "--all", "id1", "KILL"]).unwrap();
        assert!(matches!(c.command, Command::Kill { all: true, ref signal, .. } if signal == "KILL"));
    }
}
