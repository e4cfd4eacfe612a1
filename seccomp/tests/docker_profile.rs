//! strata's default profile against Docker's, rule by rule and decision by decision.
//!
//! Docker's profile is not kept in this repository: the test takes `default.json` from Debian's
//! newest `docker.io` source package (forky, fetched and checked against the archive's signed
//! index by `.ci/debian-fetch.sh`), or from `$STRATA_DOCKER_SECCOMP_PROFILE`. It applies Docker's
//! own selection (`includes`/`excludes` by capability, architecture and `minKernel`) for a range
//! of capability sets, compiles both profiles with strata's compiler (itself checked against
//! libseccomp by `differential.rs`), and compares, for every syscall of x86-64, i386 and x32, the
//! decision on argument values drawn from both profiles' conditions (on aarch64 hosts: aarch64 and
//! 32-bit Arm). Every difference must be one
//! of [`KNOWN`], each with its reason; the test prints how many rules, calls and inputs it
//! compared.

mod common;

use common::{SeccompData, run};
use seccomp::Arch;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Differences from the Docker profile that Debian ships, each deliberate.
const KNOWN: &[Known] = &[Known {
    name: "socket",
    arg0: 38,
    why: "AF_ALG is refused as in moby/profiles v0.2.1 and later (Docker 29); Docker 28's profile allows it",
}];

struct Known {
    name: &'static str,
    /// The first argument of the calls that differ.
    arg0: u64,
    why: &'static str,
}

/// Docker's default capabilities (`oci/caps/defaults.go`'s list, as documented for `docker run`).
const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    arch_map: Vec<DockerArch>,
    syscalls: Vec<DockerRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArch {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerRule {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// Docker's `default.json` and a label naming where it came from.
fn docker_profile() -> (String, DockerProfile) {
    let (label, text) = match std::env::var_os("STRATA_DOCKER_SECCOMP_PROFILE") {
        Some(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
            (Path::new(&path).display().to_string(), text)
        }
        None => from_debian(),
    };
    let profile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("Docker's profile ({label}): {e}"));
    (label, profile)
}

/// The profile in Debian forky's `docker.io` source (the engine's vendored moby/profiles).
fn from_debian() -> (String, String) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("sh")
        .arg(top.join(".ci/debian-fetch.sh"))
        .args(["source", "forky", "docker.io", r"orig\.tar"])
        .output()
        .expect("run .ci/debian-fetch.sh");
    assert!(
        out.status.success(),
        "fetching Debian's docker.io source failed (set STRATA_DOCKER_SECCOMP_PROFILE to a copy of Docker's \
         default.json instead): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("files");
    let tarball = std::fs::read_dir(&dir)
        .expect("fetched source directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.xz"))
        .expect("the fetch left docker.io's orig.tar.xz");
    let out = Command::new("tar")
        .args(["-xJf"])
        .arg(&tarball)
        .args(["--wildcards", "*/engine/vendor/github.com/moby/profiles/seccomp/default.json", "-O"])
        .output()
        .expect("run tar");
    assert!(out.status.success() && !out.stdout.is_empty(), "no seccomp/default.json in {}", tarball.display());
    let name = tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (format!("Debian forky {name}"), String::from_utf8(out.stdout).expect("default.json is UTF-8"))
}

fn kernel_at_least(wanted: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let numbers = |s: &str| -> Vec<u32> {
        s.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).take(2).collect()
    };
    numbers(&release) >= numbers(wanted)
}

/// Docker's translation of its profile for a container holding `caps` on this host (Go's
/// architecture name `arch`): the rules it keeps, as an OCI `linux.seccomp`.
fn docker_oci(profile: &DockerProfile, caps: &[String], arch: &str, native: &str) -> (serde_json::Value, usize) {
    let has = |c: &String| caps.contains(c);
    let mut rules = vec![];
    for rule in &profile.syscalls {
        let excluded = rule.excludes.as_ref().is_some_and(|ex| {
            ex.arches.iter().any(|a| a == arch)
                || ex.caps.iter().any(has)
                || ex.min_kernel.as_deref().is_some_and(kernel_at_least)
        });
        let included = rule.includes.as_ref().is_none_or(|inc| {
            (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
                && inc.caps.iter().all(has)
                && inc.min_kernel.as_deref().is_none_or(kernel_at_least)
        });
        if excluded || !included {
            continue;
        }
        let mut oci = serde_json::json!({"names": rule.names, "action": rule.action});
        if let Some(e) = rule.errno_ret {
            oci["errnoRet"] = e.into();
        }
        if let Some(args) = &rule.args {
            oci["args"] = args.clone().into();
        }
        rules.push(oci);
    }
    let entry = profile.arch_map.iter().find(|a| a.architecture == native).expect("Docker's archMap has this host");
    let mut arches = vec![entry.architecture.clone()];
    arches.extend(entry.sub_architectures.iter().flatten().cloned());
    let count = rules.len();
    let mut oci = serde_json::json!({
        "defaultAction": profile.default_action,
        "architectures": arches,
        "syscalls": rules,
    });
    if let Some(e) = profile.default_errno_ret {
        oci["defaultErrnoRet"] = e.into();
    }
    (oci, count)
}

/// Argument values worth trying for `name`: each value its conditions name in either profile, the
/// values beside it, each single bit of a mask, and the extremes.
fn interesting_values(name: &str, profiles: &[&oci_spec::runtime::LinuxSeccomp]) -> Vec<u64> {
    let mut values: BTreeSet<u64> = [0, 1, 0xffff_ffff, u64::MAX].into();
    for profile in profiles {
        for rule in profile.syscalls().iter().flatten().filter(|r| r.names().iter().any(|n| n == name)) {
            for arg in rule.args().iter().flatten() {
                let v = arg.value();
                values.extend([v, v.wrapping_sub(1), v.wrapping_add(1)]);
                if matches!(arg.op(), oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq) {
                    values.extend((0..64).map(|b| 1u64 << b).filter(|bit| v & bit != 0));
                    values.extend(arg.value_two());
                }
            }
        }
    }
    values.into_iter().collect()
}

#[test]
fn default_profile_decides_as_dockers() {
    let (label, docker) = docker_profile();
    println!("Docker's profile: {label} ({} rules)", docker.syscalls.len());
    let native = if cfg!(target_arch = "aarch64") { "SCMP_ARCH_AARCH64" } else { "SCMP_ARCH_X86_64" };
    let go_arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    let arches: &[Arch] =
        if cfg!(target_arch = "aarch64") { &[Arch::Aarch64, Arch::Arm] } else { &[Arch::X86_64, Arch::X86, Arch::X32] };

    // Capability sets: none, Docker's defaults, each capability a rule of Docker's names, all.
    let mut named: BTreeSet<String> = BTreeSet::new();
    for rule in &docker.syscalls {
        for f in [&rule.includes, &rule.excludes].into_iter().flatten() {
            named.extend(f.caps.iter().cloned());
        }
    }
    let defaults: Vec<String> = DOCKER_DEFAULT_CAPS.iter().map(|c| (*c).to_string()).collect();
    let mut cap_sets: Vec<Vec<String>> = vec![vec![], defaults.clone()];
    cap_sets.extend(named.iter().map(|c| {
        let mut set = defaults.clone();
        set.push(c.clone());
        set
    }));
    cap_sets.push(defaults.iter().chain(&named).cloned().collect());

    let (mut rules_compared, mut calls, mut inputs) = (0usize, 0usize, 0usize);
    let mut differences: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut known_seen = BTreeSet::new();
    for caps in &cap_sets {
        let (json, kept) = docker_oci(&docker, caps, go_arch, native);
        rules_compared += kept;
        let theirs_profile: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(json).expect("Docker's rules are OCI seccomp rules");
        let ours_profile = seccomp::default_profile(caps);
        let theirs = seccomp::compile(&theirs_profile).expect("Docker's profile compiles");
        let ours = seccomp::compile(&ours_profile).expect("strata's profile compiles");
        for &arch in arches {
            for &(name, nr) in arch.table() {
                calls += 1;
                let values = interesting_values(name, &[&theirs_profile, &ours_profile]);
                for a0 in &values {
                    for a1 in &values {
                        inputs += 1;
                        let data = SeccompData { nr, arch: arch.audit_token(), ip: 0, args: [*a0, *a1, 0, 0, 0, 0] };
                        let (t, o) = (run(theirs.instructions(), &data), run(ours.instructions(), &data));
                        let (t, o) = (t.expect("Docker's filter runs"), o.expect("strata's filter runs"));
                        if t == o {
                            continue;
                        }
                        if let Some(k) = KNOWN.iter().find(|k| k.name == name && k.arg0 == *a0) {
                            known_seen.insert(k.name);
                            continue;
                        }
                        differences.entry(format!("{name} on {arch:?}")).or_default().push(format!(
                            "caps {:?}, args ({a0:#x}, {a1:#x}): Docker {t:#x}, strata {o:#x}",
                            caps.iter().filter(|c| !DOCKER_DEFAULT_CAPS.contains(&c.as_str())).collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
    }
    println!(
        "compared {} capability sets: {rules_compared} Docker rules kept, {calls} (call, architecture) pairs, \
         {inputs} inputs",
        cap_sets.len()
    );
    for k in KNOWN {
        let seen = if known_seen.contains(k.name) { "differs" } else { "no longer differs" };
        println!("known difference, {seen}: {} with first argument {}: {}", k.name, k.arg0, k.why);
    }
    let report: Vec<String> =
        differences.iter().map(|(call, cases)| format!("{call}: {} inputs, e.g. {}", cases.len(), cases[0])).collect();
    assert!(report.is_empty(), "strata's default profile decides differently from Docker's:\n{}", report.join("\n"));
}
