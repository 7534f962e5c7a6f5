//! Compiles Gatehouse's own protos (`protos/`) with protox, a protobuf compiler in Rust, so
//! that building needs no `protoc`. Envoy's protos come compiled in the envoy-types crate; the
//! well-known types are envoy-types' too, so that one `Duration` type serves both.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protos");
    let proto = root.join("gatehouse/ratelimit/v1/admin.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Without compile_well_known_types, prost maps them to prost-types itself.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .compile_fds(descriptors)?;
    Ok(())
}
