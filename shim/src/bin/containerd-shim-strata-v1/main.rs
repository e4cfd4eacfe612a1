//! `containerd-shim-strata-v1`: containerd's runtime v2 shim for strata (`io.containerd.strata.v1`).
//! Thin: the version flag and the helper are dispatched here, everything else is
//! `engine::shimv2` on the containerd-shim crate.

use engine::shimv2::{self, StrataShim, helper};

fn main() {
    // One malloc arena for all threads: the daemon's threads mostly sleep in system calls, and
    // an arena per thread costs resident memory beside every container for no contention won.
    // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(helper::HELPER_ARG) {
        std::process::exit(helper::main(&args[2..]));
    }
    if args.iter().skip(1).any(|a| matches!(a.as_str(), "-v" | "--v" | "-version" | "--version")) {
        println!("containerd-shim-strata-v1:");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Runtime:  {}", shimv2::RUNTIME_ID);
        return;
    }
    containerd_shim::run::<StrataShim>(shimv2::RUNTIME_ID, Some(shimv2::config_for(&args)));
}
