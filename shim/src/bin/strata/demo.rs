//! `strata demo`: builds a small image from the host's own programs (no registry, nothing to
//! install), runs a container from it with the default configuration, and prints what the
//! container saw and how long it took.

use anyhow::{Context, Result, bail};
use engine::bundle::Bundle;
use engine::container::{self, CreateOptions};
use engine::state::StateRoot;
use std::path::{Path, PathBuf};
use std::time::Instant;

const PROGRAMS: [&str; 7] =
    ["/bin/sh", "/bin/ls", "/bin/cat", "/usr/bin/id", "/bin/hostname", "/bin/uname", "/bin/sleep"];

const SCRIPT: &str = r#"echo "hello from a strata container"
echo "hostname: $(hostname)"
echo "pid:      $$ (pid 1 means a pid namespace of its own)"
echo "user:     $(id)"
echo "kernel:   $(uname -sr)"
echo "root:     $(echo $(ls /))"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
"#;

/// Aligns tab-separated columns with spaces (for `list`).
pub fn align_columns(text: &str) -> String {
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Shared libraries a program needs, from `ldd`.
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd").arg(program).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))).map(PathBuf::from).collect())
}

fn copy_into(rootfs: &Path, file: &Path) -> Result<()> {
    let dest = rootfs.join(file.strip_prefix("/").unwrap_or(file));
    if dest.exists() {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

/// Builds the demo bundle under `dir`.
pub fn build_bundle(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    // Debian's merged /usr: /bin is a link to usr/bin; the copy keeps real files at both names.
    for p in PROGRAMS {
        let path = Path::new(p);
        if !path.exists() {
            bail!("{p} is missing on this host");
        }
        copy_into(&rootfs, path)?;
        for lib in libraries(path)? {
            copy_into(&rootfs, &lib)?;
        }
    }
    let grep = ["/bin/grep", "/usr/bin/grep"].into_iter().map(Path::new).find(|p| p.exists());
    if let Some(g) = grep {
        std::fs::copy(g, rootfs.join("bin/grep"))?;
        for lib in libraries(g)? {
            copy_into(&rootfs, &lib)?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    let mut config = engine::spec::default_config(&["/bin/sh".into(), "-c".into(), SCRIPT.into()], false);
    config["hostname"] = serde_json::json!("strata-demo");
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

/// Runs the demo; returns the container's exit code.
pub fn run(root: &StateRoot) -> Result<i32> {
    let dir = std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()));
    let result = (|| {
        let t0 = Instant::now();
        build_bundle(&dir)?;
        let built = t0.elapsed();
        let bundle = Bundle::load(&dir)?;
        let id = format!("strata-demo-{}", std::process::id());
        let t1 = Instant::now();
        let code = container::run(root, &id, &bundle, &CreateOptions::default(), false)?;
        let ran = t1.elapsed();
        println!("---");
        println!("image built from the host's programs in {:.1} ms ({})", built.as_secs_f64() * 1e3, dir.display());
        println!("container created, started, exited ({code}) and deleted in {:.1} ms", ran.as_secs_f64() * 1e3);
        Ok(code)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
