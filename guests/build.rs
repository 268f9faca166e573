//! Builds the guest kernels and the test snippets in `src/` with the host C
//! compiler driver.
//!
//! Each kernel is one GNU assembler source plus a linker script, linked into
//! a static, freestanding ELF64 image in `$OUT_DIR`. The snippets
//! (`src/snippets.S`) are assembled into one relocatable object, whose
//! `.snippet.*` sections and documented labels this script reads itself and
//! writes out as Rust constants (`$OUT_DIR/snippets.rs`); the values they use
//! come from `src/snippet_constants.rs` as `-D` definitions. The compiler is
//! `$CC` if set, else `cc`; it must target x86-64 (GCC or Clang with GNU ld
//! or lld). No network access and no prebuilt binaries are involved.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build_snippets.rs"]
mod snippets;

/// One guest kernel: its assembly source and linker script (in `src/`) and
/// the name of the ELF file produced in `$OUT_DIR`.
struct Guest {
    source: &'static str,
    script: &'static str,
    output: &'static str,
}

const GUESTS: &[Guest] = &[Guest {
    source: "minimal.S",
    script: "minimal.ld",
    output: "minimal.elf",
}];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is not set"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is not set"));
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");

    for guest in GUESTS {
        let source = manifest_dir.join("src").join(guest.source);
        let script = manifest_dir.join("src").join(guest.script);
        println!("cargo:rerun-if-changed={}", source.display());
        println!("cargo:rerun-if-changed={}", script.display());
        build(&cc, &source, &script, &out_dir.join(guest.output));
    }

    let snippets = manifest_dir.join("src").join("snippets.S");
    println!("cargo:rerun-if-changed={}", snippets.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir
            .join("src")
            .join("snippet_constants.rs")
            .display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("build_snippets.rs").display()
    );
    snippets::build(&cc, &snippets, &out_dir);
}

/// Compiles and links `source` with `script` into `output`, panicking with
/// the compiler's output on failure.
fn build(cc: &str, source: &Path, script: &Path, output: &Path) {
    let mut cmd = Command::new(cc);
    cmd.args([
        "-m64",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-ffreestanding",
        "-fno-pic",
        "-Wa,--noexecstack",
        "-Wl,--build-id=none",
        "-Wl,-n",
    ])
    .arg(format!("-Wl,-T,{}", script.display()))
    .arg("-o")
    .arg(output)
    .arg(source);
    run(cc, cmd, source);
}

/// Runs `cmd` (the C compiler `cc` on `source`), panicking with its output on
/// failure.
fn run(cc: &str, mut cmd: Command, source: &Path) {
    let result = cmd.output().unwrap_or_else(|err| {
        panic!(
            "vmkit-guests: failed to run the C compiler `{cc}` (set $CC to an x86-64 \
             GCC or Clang driver): {err}\ncommand: {cmd:?}"
        )
    });
    if !result.status.success() {
        panic!(
            "vmkit-guests: building {} failed ({})\ncommand: {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            source.display(),
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr),
        );
    }
}
