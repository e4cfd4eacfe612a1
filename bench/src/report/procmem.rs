//! Memory of processes from `/proc/<pid>/smaps_rollup`, and the process tree under a pid.

use super::MemFigure;

/// RSS and PSS of one process, KiB.
pub fn process_memory(pid: u32) -> Result<MemFigure, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    match (field("Rss:"), field("Pss:")) {
        (Some(rss_kib), Some(pss_kib)) => Ok(MemFigure { rss_kib, pss_kib }),
        _ => Err(format!("{path}: no Rss/Pss lines")),
    }
}

/// `pid` and all its descendants (from each process's `children` lists).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sum of the memory of `pids`.
pub fn sum_memory(pids: &[u32]) -> Result<MemFigure, String> {
    let mut total = MemFigure::default();
    for &p in pids {
        let m = process_memory(p)?;
        total.rss_kib += m.rss_kib;
        total.pss_kib += m.pss_kib;
    }
    Ok(total)
}

/// Pids of the processes whose command line contains `needle` (other than this process).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_is_readable_and_tree_holds_self() {
        let me = std::process::id();
        let m = process_memory(me).unwrap_or_default();
        assert!(m.rss_kib > 0 && m.pss_kib > 0);
        assert!(tree(me).contains(&me));
    }
}
