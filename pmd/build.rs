//! Builds the fast path's XDP program (bpf/fastpath.c) with clang, when clang is there
//! (scripts/install-deps.sh installs it). Without it the switch still builds and runs: the fast
//! path is then unavailable and `--fast-path xdp` says so.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/fastpath.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rustc-check-cfg=cfg(fastpath_object)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("fastpath.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let built = Command::new(&clang)
        .args(["-O2", "-g0", "-Wall", "-Werror", "-target", "bpf", "-I"])
        .arg(&arch_include)
        .args(["-c", "bpf/fastpath.c", "-o"])
        .arg(&object)
        .status();
    match built {
        Ok(status) if status.success() => println!("cargo:rustc-cfg=fastpath_object"),
        Ok(status) => panic!("{clang} failed to build bpf/fastpath.c ({status})"),
        Err(e) => println!(
            "cargo:warning=no {clang} ({e}): building without the XDP fast path (scripts/install-deps.sh installs clang)"
        ),
    }
}
