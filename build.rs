//! Compiles `proto/` with protox (no system `protoc`), generates the tonic
//! and prost code, and writes the encoded descriptor sets that the server
//! embeds: the HttpRule and access options survive in them, which is what
//! drives REST transcoding, auth and reflection at run time.

use std::{env, fs, io, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tests/proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(proto_files("proto/tenlyr/v1")?)?;
    fs::write(
        out.join("tenlyr_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_transport(false)
        .generate_default_stubs(true)
        .compile_fds(compiler.file_descriptor_set())?;

    // Messages and bindings that only the transcoder's unit tests use; no
    // Rust code is generated for them.
    let mut testing = protox::Compiler::new(["tests/proto", "proto"])?;
    testing.include_imports(true).open_files([
        "tenlyr/testing/v1/transcoding.proto",
        "tenlyr/testing/invalid/v1/bindings.proto",
    ])?;
    fs::write(
        out.join("transcoding_test_descriptor.bin"),
        testing.encode_file_descriptor_set(),
    )?;
    Ok(())
}

/// The `.proto` files of one directory, relative to `proto/`, sorted so the
/// build is reproducible.
fn proto_files(dir: &str) -> io::Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            let relative = path.strip_prefix("proto").expect("listed under proto/");
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}
