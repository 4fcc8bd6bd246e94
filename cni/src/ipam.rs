//! Delegation to the IPAM plugin named in the config, as the spec says: found in `CNI_PATH`,
//! run with the same environment and the same network configuration on stdin.

use crate::config::{Env, NetConf};
use crate::error::{code, CniError, Result};
use crate::result::CniResult;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The plugin `name` in the first `CNI_PATH` directory that has it.
pub fn find(name: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam.type {name:?}: no such plugin in CNI_PATH"),
            )
            .with_details(format!("searched {path:?}"))
        })
}

/// Runs `plugin` for `command`. ADD returns its result; the others return `None`.
pub fn run(plugin: &Path, command: &str, env: &Env, conf: &NetConf) -> Result<Option<CniResult>> {
    start(plugin, command, env, conf)?.wait(env, conf)
}

/// Starts `plugin` for `command`; `wait` collects it, so other work can overlap its run.
pub fn start(plugin: &Path, command: &str, env: &Env, conf: &NetConf) -> Result<Pending> {
    Ok(Pending {
        child: spawn(plugin, command, env, &conf.raw)?,
        plugin: plugin.to_path_buf(),
        command: command.to_string(),
    })
}

/// Whether `plugin` speaks CNI `version` (the `supportedVersions` of its VERSION answer).
/// GC is 1.1.0's: a plugin from before it refuses the request for want of a container id
/// (libcni sends none) before it says it does not know the command.
pub fn supports(plugin: &Path, version: &str, env: &Env, conf: &NetConf) -> Result<bool> {
    let what = format!("IPAM plugin {} VERSION", plugin.display());
    let out = spawn(plugin, "VERSION", env, &conf.raw)?
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("{what}: {e}")))?;
    let answer: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(code::DECODE, format!("{what}: {e}"))
            .with_details(String::from_utf8_lossy(&out.stderr).into_owned())
    })?;
    Ok(answer["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|s| s.as_str() == Some(version))))
}

/// A running IPAM plugin.
pub struct Pending {
    child: Child,
    plugin: PathBuf,
    command: String,
}

impl Pending {
    pub fn wait(self, env: &Env, conf: &NetConf) -> Result<Option<CniResult>> {
        let (plugin, command) = (self.plugin, self.command);
        match collect(self.child, &plugin, &command) {
            // A 1.1.0 configuration with an IPAM plugin that only knows 1.0.0 (Debian 12's
            // plugins): the two result formats are the same, so ask again in 1.0.0.
            Err(e) if e.code == code::INCOMPATIBLE_VERSION && conf.cni_version == "1.1.0" => {
                let mut older = conf.raw.clone();
                older["cniVersion"] = Value::from("1.0.0");
                let child = spawn(&plugin, &command, env, &older)?;
                let mut r = collect(child, &plugin, &command)?;
                if let Some(r) = &mut r {
                    r.cni_version = conf.cni_version.clone();
                }
                Ok(r)
            }
            other => other,
        }
    }
}

fn spawn(plugin: &Path, command: &str, env: &Env, conf: &Value) -> Result<Child> {
    let stdin = serde_json::to_vec(conf).map_err(|e| CniError::internal(e.to_string()))?;
    let mut cmd = Command::new(plugin);
    // The environment we were given, with the command we mean (a rollback runs DEL); what
    // we were not given (GC names no attachment) is not made up as empty.
    cmd.env("CNI_COMMAND", command);
    for (name, value) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_IFNAME", &env.ifname),
    ] {
        match value.is_empty() {
            true => cmd.env_remove(name),
            false => cmd.env(name, value),
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(netns) = &env.netns {
        cmd.env("CNI_NETNS", netns);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("IPAM plugin {}: {e}", plugin.display()),
        )
    })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its exit status.
        let _ = input.write_all(&stdin);
    }
    Ok(child)
}

fn collect(child: Child, plugin: &Path, command: &str) -> Result<Option<CniResult>> {
    let what = format!("IPAM plugin {}", plugin.display());
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("{what}: {e}")))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(match parsed {
            Some(v) if v.get("code").and_then(Value::as_u64).is_some() => {
                let code = v["code"].as_u64().unwrap_or(code::INTERNAL as u64) as u32;
                let msg = v
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                CniError {
                    code,
                    msg: format!("{what} {command}: {msg}"),
                    details: v
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or(&stderr)
                        .to_string(),
                    raw: Some(v),
                }
            }
            _ => CniError::internal(format!("{what} {command} failed ({})", out.status))
                .with_details(stderr),
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    let v = parsed
        .ok_or_else(|| CniError::new(code::DECODE, format!("{what} ADD printed no JSON result")))?;
    CniResult::from_value(v, &format!("the result of {what}")).map(Some)
}
