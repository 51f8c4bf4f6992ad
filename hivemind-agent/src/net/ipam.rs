//! Address management: each node gets a /24 of the cluster CIDR, each container an address of
//! its node's /24. Both are claimed in the store with create-if-absent transactions, so no
//! subnet or address is ever handed out twice, across restarts and (later) across nodes.
//! The choice of the next free block or address is pure and unit-tested.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::store::{Compare, Op, Store, StoreError, Txn};

const SUBNETS: &str = "/hivemind/ipam/subnets/";
const ADDRESSES: &str = "/hivemind/ipam/addresses/";
/// How often a claim is retried when another claimant wins the same block or address (each
/// round has a winner, so this bounds how many concurrent claimants one claim can lose to).
const CLAIM_ATTEMPTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the cluster CIDR {cidr} has no free /24 left for node {node}")]
    NoSubnet { cidr: Ipv4Net, node: String },
    #[error("subnet {subnet} of node {node} has no free address left")]
    NoAddress { subnet: Ipv4Net, node: String },
    #[error("lost the race for a free {what} {attempts} times in a row")]
    Contended { what: &'static str, attempts: usize },
}

/// The lowest /24 of `cluster` that is not in `taken`.
pub fn next_subnet(cluster: Ipv4Net, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    cluster.subnets(24).ok()?.find(|s| !taken.contains(s))
}

/// The gateway of a node subnet: its first host address.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// The lowest host address of `subnet` that is neither the gateway nor `used`.
pub fn next_address(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gw = gateway(subnet);
    subnet.hosts().find(|ip| *ip != gw && !used.contains(ip))
}

fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{SUBNETS}{}", subnet.network())
}

fn address_key(subnet: Ipv4Net, ip: Ipv4Addr) -> String {
    format!("{ADDRESSES}{}/{ip}", subnet.network())
}

/// The node's /24: the one it already holds, else the lowest free one, claimed.
pub async fn claim_subnet(
    store: &Store,
    cluster: Ipv4Net,
    node: &str,
) -> Result<Ipv4Net, IpamError> {
    for _ in 0..CLAIM_ATTEMPTS {
        let (claimed, _) = store.range(SUBNETS).await?;
        let mut taken = BTreeSet::new();
        for kv in &claimed {
            let Some(subnet) = kv
                .key
                .strip_prefix(SUBNETS)
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .and_then(|ip| Ipv4Net::new(ip, 24).ok())
            else {
                continue;
            };
            if kv.value == node.as_bytes() {
                return Ok(subnet);
            }
            taken.insert(subnet);
        }
        let subnet = next_subnet(cluster, &taken).ok_or_else(|| IpamError::NoSubnet {
            cidr: cluster,
            node: node.to_owned(),
        })?;
        if claim(store, subnet_key(subnet), node.as_bytes().to_vec()).await? {
            return Ok(subnet);
        }
    }
    Err(IpamError::Contended {
        what: "subnet",
        attempts: CLAIM_ATTEMPTS,
    })
}

/// The address held by `owner` (a container id), else the lowest free one, claimed for it.
pub async fn claim_address(
    store: &Store,
    subnet: Ipv4Net,
    node: &str,
    owner: &str,
) -> Result<Ipv4Addr, IpamError> {
    let prefix = format!("{ADDRESSES}{}/", subnet.network());
    for _ in 0..CLAIM_ATTEMPTS {
        let (claimed, _) = store.range(&prefix).await?;
        let mut used = BTreeSet::new();
        for kv in &claimed {
            let Some(ip) = kv.key.strip_prefix(&prefix).and_then(|ip| ip.parse().ok()) else {
                continue;
            };
            if kv.value == owner.as_bytes() {
                return Ok(ip);
            }
            used.insert(ip);
        }
        let ip = next_address(subnet, &used).ok_or_else(|| IpamError::NoAddress {
            subnet,
            node: node.to_owned(),
        })?;
        if claim(store, address_key(subnet, ip), owner.as_bytes().to_vec()).await? {
            return Ok(ip);
        }
    }
    Err(IpamError::Contended {
        what: "address",
        attempts: CLAIM_ATTEMPTS,
    })
}

/// Addresses of `subnet` and who holds them.
pub async fn addresses(
    store: &Store,
    subnet: Ipv4Net,
) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
    let prefix = format!("{ADDRESSES}{}/", subnet.network());
    let (claimed, _) = store.range(&prefix).await?;
    Ok(claimed
        .into_iter()
        .filter_map(|kv| {
            let ip = kv.key.strip_prefix(&prefix)?.parse().ok()?;
            Some((ip, String::from_utf8_lossy(&kv.value).into_owned()))
        })
        .collect())
}

/// Gives the address back, if `owner` still holds it.
pub async fn release_address(
    store: &Store,
    subnet: Ipv4Net,
    ip: Ipv4Addr,
    owner: &str,
) -> Result<(), IpamError> {
    let key = address_key(subnet, ip);
    store
        .txn(Txn {
            compare: vec![Compare::Value(key.clone(), owner.as_bytes().to_vec())],
            success: vec![Op::Delete { key }],
            failure: Vec::new(),
        })
        .await?;
    Ok(())
}

async fn claim(store: &Store, key: String, value: Vec<u8>) -> Result<bool, IpamError> {
    let outcome = store
        .txn(Txn {
            compare: vec![Compare::Absent(key.clone())],
            success: vec![Op::Put {
                key,
                value,
                lease: 0,
            }],
            failure: Vec::new(),
        })
        .await?;
    Ok(outcome.succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn subnets_are_handed_out_lowest_first() {
        let cluster = net("10.244.0.0/16");
        let mut taken = BTreeSet::new();
        assert_eq!(next_subnet(cluster, &taken), Some(net("10.244.0.0/24")));
        taken.insert(net("10.244.0.0/24"));
        taken.insert(net("10.244.2.0/24"));
        assert_eq!(next_subnet(cluster, &taken), Some(net("10.244.1.0/24")));
        let tiny = net("10.0.0.0/23");
        let full: BTreeSet<_> = [net("10.0.0.0/24"), net("10.0.1.0/24")].into();
        assert_eq!(next_subnet(tiny, &full), None);
    }

    #[test]
    fn addresses_skip_network_gateway_broadcast_and_used() {
        let subnet = net("10.244.3.0/24");
        assert_eq!(gateway(subnet), Ipv4Addr::new(10, 244, 3, 1));
        let mut used = BTreeSet::new();
        assert_eq!(
            next_address(subnet, &used),
            Some(Ipv4Addr::new(10, 244, 3, 2))
        );
        used.insert(Ipv4Addr::new(10, 244, 3, 2));
        used.insert(Ipv4Addr::new(10, 244, 3, 4));
        assert_eq!(
            next_address(subnet, &used),
            Some(Ipv4Addr::new(10, 244, 3, 3))
        );
        let all: BTreeSet<_> = (2..=254).map(|i| Ipv4Addr::new(10, 244, 3, i)).collect();
        assert_eq!(
            next_address(subnet, &all),
            None,
            ".255 is broadcast, never handed out"
        );
    }

    #[tokio::test]
    async fn claims_are_unique_and_stable_across_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let subnet;
        let first;
        {
            let store = Store::open_redb(&path).expect("open");
            subnet = claim_subnet(&store, net("10.244.0.0/16"), "n1")
                .await
                .expect("subnet");
            assert_eq!(subnet, net("10.244.0.0/24"));
            let other = claim_subnet(&store, net("10.244.0.0/16"), "n2")
                .await
                .expect("subnet");
            assert_eq!(other, net("10.244.1.0/24"));
            first = claim_address(&store, subnet, "n1", "web-a")
                .await
                .expect("ip");
            let second = claim_address(&store, subnet, "n1", "web-b")
                .await
                .expect("ip");
            assert_ne!(first, second);
            assert_eq!(
                claim_address(&store, subnet, "n1", "web-a")
                    .await
                    .expect("ip"),
                first,
                "idempotent"
            );
            release_address(&store, subnet, second, "web-b")
                .await
                .expect("release");
        }
        let store = Store::open_redb(&path).expect("reopen");
        assert_eq!(
            claim_subnet(&store, net("10.244.0.0/16"), "n1")
                .await
                .expect("subnet"),
            subnet
        );
        let held = addresses(&store, subnet).await.expect("list");
        assert_eq!(held, vec![(first, "web-a".to_owned())]);
        // Concurrent claimants never get the same address.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                claim_address(&store, subnet, "n1", &format!("c{i}"))
                    .await
                    .expect("claim")
            }));
        }
        let mut got = BTreeSet::new();
        for task in tasks {
            assert!(got.insert(task.await.expect("task")), "handed out twice");
        }
    }
}
