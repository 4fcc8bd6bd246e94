//! Builds the fast path's XDP programs (bpf/fastpath.c for the bridge, bpf/fastpath_tuple.c for
//! the gateway) with clang, when clang is there (scripts/install-deps.sh installs it). Without
//! it the switch still builds and runs: the fast path is then unavailable and `--fast-path xdp`
//! says so.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: [&str; 2] = ["fastpath", "fastpath_tuple"];

fn main() {
    println!("cargo:rerun-if-changed=bpf/common.h");
    for p in PROGRAMS {
        println!("cargo:rerun-if-changed=bpf/{p}.c");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rustc-check-cfg=cfg(fastpath_object)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    for p in PROGRAMS {
        let built = Command::new(&clang)
            .args(["-O2", "-g0", "-Wall", "-Werror", "-target", "bpf", "-I"])
            .arg(&arch_include)
            .arg("-c")
            .arg(format!("bpf/{p}.c"))
            .arg("-o")
            .arg(out.join(format!("{p}.o")))
            .status();
        match built {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("{clang} failed to build bpf/{p}.c ({status})"),
            Err(e) => {
                println!(
                    "cargo:warning=no {clang} ({e}): building without the XDP fast path (scripts/install-deps.sh installs clang)"
                );
                return;
            }
        }
    }
    println!("cargo:rustc-cfg=fastpath_object");
}
