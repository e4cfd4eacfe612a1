//! `containerd-shim-strata-v1`: containerd's runtime v2 shim for strata (`io.containerd.strata.v1`).
//! Thin: everything is `engine::shimv2` ([`engine::shimv2::main`]).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(engine::shimv2::main(&args));
}
