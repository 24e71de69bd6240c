//! Compiles the `.proto` files with protox (pure Rust), so a fresh machine needs no
//! system `protoc`, and keeps the descriptor set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/seatd/v1/seatd.proto",
        "proto/seatd/v1/raft.proto",
        "proto/seatd/v1/passthrough.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("seatd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The pass-through views decode into slices of the received buffer.
    tonic_prost_build::configure()
        .bytes(".seatd.passthrough.v1")
        .compile_fds(fds)?;
    Ok(())
}
