//! The human-readable form of a control answer: aligned tables and short sentences.

use serde_json::Value;
use std::fmt::Write;

/// A value as a cell: strings bare, null as "-".
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Columns sized to their widest cell; numbers right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let numeric = !c.is_empty() && c.parse::<f64>().is_ok();
            if numeric {
                let _ = write!(text, "{c:>w$}");
            } else {
                let _ = write!(text, "{c:<w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, headers.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// A table of `list`'s objects, one column per key, headed by the keys.
fn listing(list: &Value, keys: &[&str]) -> String {
    table(keys, &rows(list, keys))
}

fn rows(list: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|item| keys.iter().map(|k| cell(&item[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

fn drops_total(port: &Value) -> u64 {
    port["drops"]
        .as_object()
        .map_or(0, |d| d.values().filter_map(Value::as_u64).sum())
}

fn ports(list: &Value) -> String {
    let items = list.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                cell(&p["name"]),
                cell(&p["rx_packets"]),
                cell(&p["tx_packets"]),
                cell(&p["rx_bytes"]),
                cell(&p["tx_bytes"]),
                drops_total(p).to_string(),
                cell(&p["mac"]),
                cell(&p["ip"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "port",
            "rx_packets",
            "tx_packets",
            "rx_bytes",
            "tx_bytes",
            "drops",
            "mac",
            "ip",
        ],
        &rows,
    );
    for p in &items {
        let reasons: Vec<String> = p["drops"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        if !reasons.is_empty() {
            let _ = writeln!(out, "drops on {}: {}", cell(&p["name"]), reasons.join(" "));
        }
    }
    out
}

/// Counters that moved, as `name=value`.
fn moved(counters: &Value) -> String {
    counters
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn mib(v: &Value) -> String {
    format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0))
}

fn stats(r: &Value) -> String {
    let mut out = ports(&r["ports"]);
    out.push('\n');
    let workers = [
        "worker",
        "core",
        "packets",
        "cycles_per_packet",
        "busy_percent",
        "sockets",
        "frames_free",
    ];
    out.push_str(&listing(&r["workers"], &workers));
    let _ = writeln!(
        out,
        "\nbridge: fdb_entries={} {}",
        r["fdb_entries"],
        moved(&r["bridge"])
    );
    if !r["gateway"].is_null() {
        let _ = writeln!(out, "gateway: {}", moved(&r["gateway"]));
        let _ = writeln!(out, "conntrack: {}", moved(&r["conntrack"]));
    }
    let m = &r["frame_memory"];
    let _ = writeln!(
        out,
        "frame memory: {} pinned in {} segments ({} frames: {} free, {} in fill rings, {} in tx), {} sockets, kernel bookkeeping about {}",
        mib(&m["bytes_pinned"]),
        m["segments"],
        m["frames"],
        m["frames_free"],
        m["frames_in_fill_rings"],
        m["frames_in_tx"],
        m["sockets"],
        mib(&m["kernel_bytes_estimate"]),
    );
    if r["ports_lost"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "ports lost (interface disappeared): {}",
            r["ports_lost"]
        );
    }
    out
}

fn services(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        cell(&s["name"]),
                        format!("{}:{}", cell(&s["cluster_ip"]), cell(&s["port"])),
                        cell(&s["protocol"]),
                        cell(&s["node_port"]),
                        cell(&s["affinity_s"]),
                        cell(&s["backends"]),
                        cell(&s["node_port_local"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "name",
            "cluster_ip",
            "protocol",
            "node_port",
            "affinity_s",
            "backends",
            "node_port_local",
        ],
        &rows,
    )
}

fn import(r: &Value) -> String {
    let mut out = match r["unchanged"].as_bool() {
        Some(true) => format!(
            "imported {} services ({} endpoints) in {} ms; nothing changed\n",
            r["services"], r["endpoints"], r["ms"]
        ),
        _ => format!(
            "imported {} services ({} endpoints) in {} ms; {} connections to removed backends closed\n",
            r["services"], r["endpoints"], r["ms"], r["flows_closed"]
        ),
    };
    let named = r["skipped"].as_array().map_or(&[][..], |v| v.as_slice());
    for s in named {
        let _ = writeln!(out, "skipped {}", cell(s));
    }
    let count = r["skipped_count"].as_u64().unwrap_or(0) as usize;
    if count > named.len() {
        let _ = writeln!(out, "skipped {} more", count - named.len());
    }
    out
}

pub fn render(words: &[String], r: &Value) -> String {
    let words: Vec<&str> = words
        .iter()
        .map(|s| s.as_str())
        .filter(|w| !w.starts_with("--"))
        .collect();
    match words.as_slice() {
        ["show", "ports", ..] => ports(&r["ports"]),
        ["show", "stats", ..] => stats(r),
        ["show", "fdb", ..] => listing(&r["fdb"], &["mac", "port", "age_s"]),
        ["show", "neigh", ..] => listing(&r["neigh"], &["ip", "mac", "port", "state"]),
        ["show", "routes", ..] => listing(&r["routes"], &["prefix", "via", "segment"]),
        ["show", "services", ..] => services(&r["services"]),
        ["show", "conntrack", ..] => {
            let keys = [
                "proto",
                "orig_src",
                "orig_dst",
                "reply_src",
                "reply_dst",
                "state",
                "expires_s",
            ];
            let mut out = listing(&r["conntrack"], &keys);
            let shown = r["conntrack"].as_array().map_or(0, |a| a.len());
            let _ = writeln!(out, "{shown} of {} connections", r["total"]);
            out
        }
        ["port", "add", ..] => {
            let p = &r["port"];
            format!(
                "added {} as port {} ({}, {} queue(s){}) in {} ms\n",
                cell(&p["name"]),
                p["id"],
                cell(&p["xdp_mode"]),
                p["queues"],
                if p["mac"].is_null() {
                    String::new()
                } else {
                    format!(", bound to {} {}", cell(&p["mac"]), cell(&p["ip"]))
                },
                r["ms"]
            )
        }
        ["port", "del", ..] => format!(
            "removed {}: forgot {} fdb entries, {} neighbours, {} connections; in {} ms\n",
            cell(&r["removed"]),
            r["fdb_entries"],
            r["neighbors"],
            r["flows"],
            r["ms"]
        ),
        ["fdb", "flush"] => format!("flushed {} fdb entries\n", r["flushed"]),
        ["conntrack", "flush"] => format!("flushed {} connections\n", r["flushed"]),
        ["reload"] => format!("{}\n", cell(&r["reloaded"])),
        ["import", ..] => import(r),
        ["capture", ..] => format!(
            "wrote {} frames of {} to {}{}\n",
            r["captured"],
            cell(&r["port"]),
            cell(&r["file"]),
            match r["lost"].as_u64() {
                Some(n) if n > 0 => {
                    format!("; {n} more not captured (the file's writer fell behind)")
                }
                _ => String::new(),
            }
        ),
        _ => format!("{r:#}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_numbers_go_right() {
        let t = table(
            &["mac", "age_s"],
            &[vec!["02:00:00:00:00:01".into(), "7".into()]],
        );
        assert_eq!(t, "mac                age_s\n02:00:00:00:00:01      7\n");
    }

    #[test]
    fn port_tables_sum_drops_and_name_the_reasons() {
        let r = json!({"ports": [{"name": "vp1", "rx_packets": 3, "tx_packets": 4, "rx_bytes": 5,
            "tx_bytes": 6, "drops": {"tx_drop_ring_full": 2, "rx_drop_pipeline": 1}, "mac": null, "ip": null}]});
        let out = render(&["show".into(), "ports".into()], &r);
        assert!(out.contains("vp1"), "{out}");
        assert!(
            out.contains("drops on vp1: rx_drop_pipeline=1 tx_drop_ring_full=2"),
            "{out}"
        );
    }
}
