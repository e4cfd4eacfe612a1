//! The consistency check CI runs on a produced REPORT.md: no NaN or infinity anywhere, and every
//! system of every table present with figures, a published figure, or `unavailable: <reason>`.

/// Row labels (prefixes) each section must hold, by section heading.
pub fn expected_rows() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut start = vec!["strata (direct)", "crun (direct)", "runc (direct)"];
    start.extend(super::containerd::SYSTEMS);
    let mut memory = start.clone();
    start.extend(["qemu microvm (", "Firecracker"]);
    memory.push("qemu microvm (");
    vec![
        ("## 1. Start time", start),
        ("## 2. Memory per running instance", memory),
        ("## 3. Density", vec!["strata (direct)", "qemu microvm ("]),
        ("## 4. Image size", super::images::SYSTEMS.to_vec()),
        ("## 4b. Image size: rebuilt bases", super::images::REBUILT_SYSTEMS.to_vec()),
        ("## 5. Pods through CRI", super::pods::SYSTEMS.to_vec()),
        ("## 6. Creation throughput through containerd", super::scale::THROUGHPUT_SYSTEMS.to_vec()),
        ("## 7. Reliability", super::scale::RELIABILITY_SYSTEMS.to_vec()),
    ]
}

fn has_bad_number(text: &str) -> Option<String> {
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')) {
        let w = word.trim_start_matches(['-', '+']).to_ascii_lowercase();
        if w == "nan" || w == "inf" || w == "infinity" {
            return Some(word.to_string());
        }
    }
    None
}

/// Every problem found in `md`; empty when the report is consistent.
pub fn check_report(md: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, line) in md.lines().enumerate() {
        if let Some(w) = has_bad_number(line) {
            problems.push(format!("line {}: `{w}` in {line:?}", i + 1));
        }
    }
    for (heading, systems) in expected_rows() {
        let Some(start) = md.find(heading) else {
            problems.push(format!("section {heading:?} is missing"));
            continue;
        };
        let body = &md[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        for system in systems {
            let prefix = format!("| {system}");
            let Some(row) = body.lines().find(|l| l.starts_with(&prefix)) else {
                problems.push(format!("{heading}: no row for {system:?}"));
                continue;
            };
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let figures = cells.iter().skip(2).any(|c| c.chars().next().is_some_and(|ch| ch.is_ascii_digit()));
            let marked = cells.iter().any(|c| {
                c.strip_prefix("unavailable: ")
                    .or_else(|| c.strip_prefix("published, not measured: "))
                    .is_some_and(|r| !r.trim().is_empty())
            });
            if !figures && !marked {
                problems.push(format!("{heading}: row {system:?} has neither figures nor a reason: {row}"));
            }
            // strata's own rows must be measured: only the short run may leave a section out.
            let strata_unavailable = system.starts_with("strata")
                && cells.iter().any(|c| c.starts_with("unavailable: ") && !c.contains("left out of the short run"));
            if strata_unavailable && !figures {
                problems.push(format!("{heading}: strata's row {system:?} was not measured: {row}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_are_found_but_not_in_words() {
        assert!(has_bad_number("| 1.0 | NaN |").is_some());
        assert!(has_bad_number("| inf ms |").is_some());
        assert!(has_bad_number("information, infra, nano").is_none());
    }

    #[test]
    fn a_row_without_reason_is_reported() {
        let md = "## 2. Memory per running instance\n| system | x | y |\n| strata (direct) | - | 1.00 MiB |\n\
                  | crun (direct) | - | unavailable: not installed |\n| runc (direct) | - | unavailable:  |\n";
        let p = check_report(md);
        assert!(p.iter().any(|p| p.contains("runc (direct)")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("qemu microvm")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("crun (direct)") || p.contains("\"strata (direct)\"")), "{p:?}");
    }

    #[test]
    fn a_strata_row_must_be_measured_unless_the_short_run_left_it_out() {
        let md = "## 3. Density\n| system | x | y |\n| strata (direct) | - | unavailable: the runtime failed |\n\
                  | qemu microvm (x) | - | unavailable: no kernel |\n\
                  ## 5. Pods through CRI\n| system | x | y |\n\
                  | strata (CRI, containerd 1.7) | - | unavailable: left out of the short run (minutes) |\n";
        let p = check_report(md);
        assert!(p.iter().any(|p| p.contains("strata's row \"strata (direct)\"")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("strata's row \"strata (CRI")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("strata's row \"qemu")), "{p:?}");
    }
}
