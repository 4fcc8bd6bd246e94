//! Ports attached by `port add` (pods, by the CNI plugin), recorded beside the control socket
//! (`/run/vswitch/vswitch.sock`: `/run/vswitch/vswitch-ports/<interface>`, the binding as
//! JSON) so a restarted switch attaches them again: nothing else would (the runtime does not
//! call ADD again for running pods). `port del` and an interface that disappeared remove the
//! record. Named after the socket, so switches whose sockets share a directory keep apart.
//! The interface's index is recorded too: an interface of that name made while the switch
//! was down is another one (indexes are not reused soon), and its pod's binding is not this.

use pipeline::l2::PortBinding;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub struct PortRecords {
    dir: PathBuf,
}

/// What a record says of its port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub binding: Option<PortBinding>,
    /// The interface's index when it was attached; none in records from before indexes.
    pub ifindex: Option<u32>,
}

impl PortRecords {
    /// The records of the switch whose control socket is `socket`.
    pub fn beside(socket: &Path) -> PortRecords {
        let stem = socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vswitch".into());
        let dir = socket
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(format!("{stem}-ports"));
        PortRecords { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        // An interface name is one path component (the kernel refuses '/' in it).
        (!name.is_empty() && !name.contains('/') && name != "." && name != "..")
            .then(|| self.dir.join(name))
    }

    /// Records `name` with its binding and interface index.
    pub fn record(&self, name: &str, record: Record) -> std::io::Result<()> {
        let Some(path) = self.path(name) else {
            return Err(std::io::Error::other(format!(
                "{name:?} is not a port name"
            )));
        };
        std::fs::create_dir_all(&self.dir)?;
        let mut value = match record.binding {
            Some(b) => json!({ "mac": b.mac.to_string(), "ip": b.ip.map(|ip| ip.to_string()) }),
            None => json!({}),
        };
        if let Some(i) = record.ifindex {
            value["ifindex"] = json!(i);
        }
        // Written whole, then renamed: a switch killed meanwhile leaves the old record or none.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value.to_string())?;
        std::fs::rename(&tmp, &path)
    }

    /// Removes `name`'s record, if any (and the directory with the last).
    pub fn forget(&self, name: &str) -> std::io::Result<()> {
        match self.path(name).map(std::fs::remove_file) {
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => {
                // Fails while records remain: then it stays.
                let _ = std::fs::remove_dir(&self.dir);
                Ok(())
            }
        }
    }

    /// Every record: the port's name and record, or why the record cannot be read.
    pub fn list(&self) -> Vec<(String, Result<Record, String>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .map(|name| {
                let read = std::fs::read_to_string(self.dir.join(&name))
                    .map_err(|e| e.to_string())
                    .and_then(|text| record_of(&text));
                (name, read)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn record_of(text: &str) -> Result<Record, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let field = |k: &str| value.get(k).and_then(Value::as_str);
    let binding = crate::control::commands::port_binding(field("mac"), field("ip"))?;
    let ifindex = match value.get("ifindex") {
        None => None,
        Some(i) => Some(
            i.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("ifindex {i} is not an interface index"))?,
        ),
    };
    Ok(Record { binding, ifindex })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn records_round_trip_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let records = PortRecords::beside(&dir.path().join("vswitch.sock"));
        assert!(records.list().is_empty(), "no directory yet");
        let bound = PortBinding {
            mac: "02:00:00:00:01:02".parse().unwrap(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
        };
        let bound = Record {
            binding: Some(bound),
            ifindex: Some(7),
        };
        let unbound = Record {
            binding: None,
            ifindex: Some(8),
        };
        let mac_only = Record {
            binding: Some(PortBinding {
                ip: None,
                ..bound.binding.unwrap()
            }),
            ifindex: Some(9),
        };
        records.record("vsw1", bound).unwrap();
        records.record("vsw2", unbound).unwrap();
        records.record("vsw3", mac_only).unwrap();
        assert_eq!(
            records.list(),
            [
                ("vsw1".to_string(), Ok(bound)),
                ("vsw2".to_string(), Ok(unbound)),
                ("vsw3".to_string(), Ok(mac_only)),
            ]
        );
        records.forget("vsw2").unwrap();
        records.forget("vsw2").unwrap();
        assert_eq!(records.list().len(), 2);
        assert_eq!(records.dir(), dir.path().join("vswitch-ports"));
        std::fs::write(records.dir().join("vsw4"), "not json").unwrap();
        assert!(records.list()[2].1.is_err());
        // A record from before interface indexes.
        std::fs::write(
            records.dir().join("vsw5"),
            r#"{"mac": "02:00:00:00:01:05"}"#,
        )
        .unwrap();
        let old = records.list()[3].1.clone().unwrap();
        assert_eq!(old.ifindex, None);
        assert!(old.binding.is_some());
        std::fs::write(records.dir().join("vsw6"), r#"{"ifindex": -1}"#).unwrap();
        assert!(records.list()[4].1.is_err());
        assert!(records.record("../x", unbound).is_err());
        for name in ["vsw1", "vsw3", "vsw4", "vsw5", "vsw6"] {
            records.forget(name).unwrap();
        }
        assert!(!records.dir().exists(), "gone with the last record");
    }
}
