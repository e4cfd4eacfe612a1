//! The CRI container log format: one entry per line, `TIMESTAMP STREAM TAG CONTENT`, the
//! timestamp RFC 3339 with nanoseconds, the stream `stdout` or `stderr`, the tag `F` for a full
//! line or `P` for part of one (a line longer than containerd's maximum, or the unterminated
//! end of the output).

use std::path::Path;

use crate::{Error, Result};

/// One entry of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub timestamp: String,
    pub stream: String,
    pub partial: bool,
    pub content: String,
}

/// Whether `t` reads as RFC 3339 (`2024-01-02T03:04:05.123456789Z`, or with an offset).
pub fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' || !digits(8..10) {
        return false;
    }
    if b[10] != b'T' || !digits(11..13) || b[13] != b':' || !digits(14..16) || b[16] != b':' || !digits(17..19) {
        return false;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z" || (rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && rest.as_bytes()[3] == b':')
}

/// Parses one log line; an error says what is wrong with it.
pub fn parse_line(line: &str) -> std::result::Result<Entry, String> {
    let mut parts = line.splitn(4, ' ');
    let (Some(timestamp), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("not TIMESTAMP STREAM TAG CONTENT: {line:?}"));
    };
    let content = parts.next().unwrap_or("");
    if !is_rfc3339(timestamp) {
        return Err(format!("timestamp {timestamp:?} is not RFC 3339 in {line:?}"));
    }
    if stream != "stdout" && stream != "stderr" {
        return Err(format!("stream {stream:?} is neither stdout nor stderr in {line:?}"));
    }
    let partial = match tag {
        "F" => false,
        "P" => true,
        // A tag may carry more than the partial flag one day (`F:...`); the first letter counts.
        t if t.starts_with("F:") => false,
        t if t.starts_with("P:") => true,
        t => return Err(format!("tag {t:?} is neither F nor P in {line:?}")),
    };
    Ok(Entry { timestamp: timestamp.to_string(), stream: stream.to_string(), partial, content: content.to_string() })
}

/// Every entry of the log at `path` (a missing file has none).
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let text = match std::fs::read(path) {
        Ok(t) => String::from_utf8_lossy(&t).to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    text.lines().map(|l| parse_line(l).map_err(|m| Error::Containerd(format!("{}: {m}", path.display())))).collect()
}

/// The lines of `stream` reassembled from its entries (partial entries joined to the next).
pub fn lines(entries: &[Entry], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for e in entries.iter().filter(|e| e.stream == stream) {
        cur.push_str(&e.content);
        if !e.partial {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_containerd_writes_them() {
        assert!(is_rfc3339("2025-12-01T10:11:12.123456789Z"));
        assert!(is_rfc3339("2025-12-01T10:11:12Z"));
        assert!(is_rfc3339("2025-12-01T10:11:12.5+01:00"));
        assert!(!is_rfc3339("2025-12-01 10:11:12Z"));
        assert!(!is_rfc3339("2025-12-01T10:11:12.Z"));
        assert!(!is_rfc3339("yesterday"));
    }

    #[test]
    fn entries_and_lines() {
        let log = [
            "2025-12-01T10:11:12.1Z stdout P abc",
            "2025-12-01T10:11:12.2Z stderr F e r",
            "2025-12-01T10:11:12.3Z stdout F def",
        ];
        let entries: Vec<Entry> = log.iter().map(|l| parse_line(l).expect("valid")).collect();
        assert!(entries[0].partial && !entries[2].partial);
        assert_eq!(entries[1].content, "e r");
        assert_eq!(lines(&entries, "stdout"), vec!["abcdef"]);
        assert_eq!(lines(&entries, "stderr"), vec!["e r"]);
        assert!(parse_line("2025-12-01T10:11:12Z stdin F x").is_err());
        assert!(parse_line("2025-12-01T10:11:12Z stdout X x").is_err());
        assert_eq!(parse_line("2025-12-01T10:11:12Z stdout F").map(|e| e.content), Ok(String::new()));
    }
}
