//! Generates the snapshots and diff services (servers and clients) from `proto/` with protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // the clients (for tests) connect through their own connector, not tonic's transport
        .build_transport(false)
        .compile_protos(&["proto/snapshots.proto", "proto/mount.proto", "proto/diff.proto"], &["proto"])?;
    Ok(())
}
