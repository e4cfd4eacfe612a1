//! Replays the corpus of `fuzz/fuzz_targets/dbus_message.rs` on stable Rust: every message from
//! systemd's socket decodes or fails without panicking, and the well-formed ones decode to what
//! systemd sent.

use std::fs;
use std::path::Path;

use cgroups::systemd::dbus::{Value, parse_message};

#[test]
fn dbus_corpus_decodes_or_fails() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dbus_message");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).expect("readable corpus file");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let parsed = parse_message(&data);
        match name.as_str() {
            "method-return" => {
                let m = parsed.expect("a method return");
                assert_eq!(m.body, [Value::ObjectPath("/org/freedesktop/systemd1/job/16".into())]);
            }
            "error" => {
                let m = parsed.expect("an error");
                assert_eq!(m.error_name.as_deref(), Some("org.freedesktop.systemd1.NoSuchUnit"));
            }
            "job-removed" => {
                let m = parsed.expect("a signal");
                assert_eq!(m.member.as_deref(), Some("JobRemoved"));
                assert_eq!(m.body.get(3).and_then(Value::as_str), Some("done"));
            }
            "properties-changed" | "variant-state" | "deep" => {
                parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "truncated" | "big-endian" => assert!(parsed.is_err(), "{name} decoded"),
            _ => {}
        }
        replayed += 1;
    }
    assert!(replayed >= 8, "only {replayed} corpus files in {}", dir.display());
}
