//! The agent's pinned BPF maps as `bpftool` shows them (its BTF formatting, JSON): what the
//! datapath really holds, read with the operator's own tool.

use std::{net::Ipv4Addr, path::Path, process::Command};

use serde_json::Value;

use crate::util::{run, stderr, stdout};

/// A pinned map's entries (`bpftool -j map dump pinned PIN`, the `formatted` part of each).
pub fn dump(pin: &Path) -> Vec<Value> {
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin));
    assert!(out.status.success(), "bpftool: {}", stderr(&out));
    serde_json::from_str::<Value>(&stdout(&out))
        .expect("bpftool JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|entry| entry["formatted"].clone())
        .collect()
}

/// An address as the maps hold it (network byte order read as a native `u32`).
pub fn wire(ip: &str) -> u64 {
    let ip: Ipv4Addr = ip.parse().expect("ip");
    u64::from(u32::from_ne_bytes(ip.octets()))
}

/// The dotted address of a map's `u32`.
pub fn dotted(wire: u64) -> String {
    let wire = u32::try_from(wire).expect("an IPv4 address");
    Ipv4Addr::from(wire.to_ne_bytes()).to_string()
}

/// (backend count, backend addresses) the balancer's maps under `pins` hold for `vip`'s TCP
/// service, if it has one.
pub fn vip_backends(pins: &Path, vip: &str) -> Option<(u64, Vec<u64>)> {
    let id = wire(vip);
    let service = dump(&pins.join("HM_LB_SERVICES"))
        .into_iter()
        .find(|e| e["key"]["ip"] == id && e["key"]["protocol"] == 6)?;
    let (count, base) = (
        service["value"]["count"].as_u64()?,
        service["value"]["base"].as_u64()?,
    );
    let backends = dump(&pins.join("HM_LB_BACKENDS"))
        .into_iter()
        .filter(|e| e["key"]["id"] == id)
        .filter(|e| {
            e["key"]["slot"]
                .as_u64()
                .is_some_and(|s| s >= base && s < base + count)
        })
        .filter_map(|e| e["value"]["ip"].as_u64())
        .collect();
    Some((count, backends))
}
