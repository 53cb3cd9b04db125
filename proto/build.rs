//! Compiles the .proto files with protox (no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/client.proto", "proto/logic.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".im.client.v1.Message.body")
        .bytes(".im.client.v1.C2cSendRequest.body")
        .bytes(".im.client.v1.C2sSendRequest.body")
        .compile_fds(fds)?;
    Ok(())
}
