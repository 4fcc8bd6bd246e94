//! vswitch-cni: a CNI plugin (specification 1.0.0 and 1.1.0) that attaches pods to a running
//! vswitch. A container runtime runs it with `CNI_*` variables and the network configuration on
//! stdin; it prints a result, or an error result, on stdout.
#![deny(unsafe_code)]

mod commands;
mod config;
mod error;
mod ipam;
mod netlink;
mod result;
mod switch;

use config::{Env, NetConf};
use error::{code, CniError};
use serde_json::Value;
use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // VERSION may come without a configuration; the others need one.
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::version_of(&stdin).unwrap_or_else(|| "1.1.0".into());
    let outcome = match read {
        Ok(_) => run(&command, &stdin),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("reading stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    let code = match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            // The runtime reads stdout; a person running it by hand reads this.
            eprintln!("vswitch-cni {command}: {e}");
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}

fn run(command: &str, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let get = |k: &str| std::env::var(k).ok();
    match command {
        "VERSION" => Ok(Some(commands::version(
            config::version_of(stdin).as_deref(),
        ))),
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => {
            let env = Env::read(get, command)?;
            let conf = NetConf::parse(stdin)?;
            match command {
                "ADD" => {
                    let r = commands::add(&env, &conf)?;
                    serde_json::to_value(r)
                        .map(Some)
                        .map_err(|e| CniError::internal(e.to_string()))
                }
                "DEL" => commands::del(&env, &conf).map(|_| None),
                "CHECK" => commands::check(&env, &conf).map(|_| None),
                "STATUS" => commands::status(&conf).map(|_| None),
                _ => commands::gc(&env, &conf).map(|_| None),
            }
        }
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is missing")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
            ),
        )),
    }
}
