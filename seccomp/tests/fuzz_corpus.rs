//! Replays the fuzz corpus (`fuzz/corpus/seccomp_profile/`) on stable Rust with the same check as
//! the `seccomp_profile` fuzz target: an error or a program that passes the verifier rules.

use std::path::Path;

#[test]
fn corpus_compiles_or_errors_and_verifies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/seccomp_profile");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable directory entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        replayed += 1;
        let Ok(profile) = serde_json::from_slice::<oci_spec::runtime::LinuxSeccomp>(&data) else {
            continue;
        };
        if let Ok(filter) = seccomp::compile(&profile)
            && let Err(e) = seccomp::verify(filter.instructions())
        {
            panic!("{}: compiled program fails verification: {e}", path.display());
        }
    }
    assert!(replayed >= 5, "only {replayed} corpus files in {}", dir.display());
}

#[test]
fn default_profiles_verify() {
    for caps in [vec![], vec!["CAP_SYS_ADMIN".to_string()]] {
        let filter = seccomp::compile(&seccomp::default_profile(&caps)).expect("compiles");
        seccomp::verify(filter.instructions()).expect("verifies");
        assert!(filter.instructions().len() < seccomp::MAX_INSNS);
    }
}
