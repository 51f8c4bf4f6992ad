//! VIP allocation in the store: one address of the service CIDR per app, stable for the app's
//! lifetime (restarts, redeploys, scaling, agent restarts), released when the app is removed.
//!
//! Two keys per VIP, written and deleted together in one transaction: `vips/app/<app>` (what
//! an app's VIP is) and `vips/ip/<address>` (who holds an address). Both must be absent for a
//! claim to succeed, so two apps never get one address even when two nodes allocate at once
//! (the same code runs against redb on one node and etcd in a cluster).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::{
    model::keys,
    state::State,
    store::{Compare, Op, StoreError, Txn},
};

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the service CIDR {0} has no free address left for another app's VIP")]
    Exhausted(Ipv4Net),
    #[error("could not claim a VIP for app {0}: the store kept changing")]
    Contended(String),
}

fn app_key(app: &str) -> String {
    format!("{}{app}", keys::VIPS_BY_APP)
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{}{ip}", keys::VIPS_BY_IP)
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The app's VIP, if it has one.
pub async fn vip(state: &State, app: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    Ok(state
        .store()
        .get_json::<Ipv4Addr>(&app_key(app))
        .await?
        .map(|entry| entry.value))
}

/// Every allocated VIP, by app.
pub async fn vips(state: &State) -> Result<BTreeMap<String, Ipv4Addr>, StoreError> {
    Ok(state
        .store()
        .range_json::<Ipv4Addr>(keys::VIPS_BY_APP)
        .await?
        .0
        .into_iter()
        .filter_map(|entry| {
            Some((
                entry.key.strip_prefix(keys::VIPS_BY_APP)?.to_owned(),
                entry.value,
            ))
        })
        .collect())
}

/// The app's VIP, claimed now if it has none: the lowest free address of `cidr` (its first
/// and last addresses are never handed out).
pub async fn ensure(state: &State, cidr: Ipv4Net, app: &str) -> Result<Ipv4Addr, AllocError> {
    for _ in 0..32 {
        if let Some(ip) = vip(state, app).await? {
            return Ok(ip);
        }
        let (taken, _) = state.store().range(keys::VIPS_BY_IP).await?;
        let taken: std::collections::BTreeSet<Ipv4Addr> = taken
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::VIPS_BY_IP)?.parse().ok())
            .collect();
        let ip = first_free(cidr, &taken).ok_or(AllocError::Exhausted(cidr))?;
        let outcome = state
            .store()
            .txn(Txn {
                compare: vec![Compare::Absent(app_key(app)), Compare::Absent(ip_key(ip))],
                success: vec![
                    Op::Put {
                        key: app_key(app),
                        value: json(&ip),
                        lease: 0,
                    },
                    Op::Put {
                        key: ip_key(ip),
                        value: json(&app),
                        lease: 0,
                    },
                ],
                failure: Vec::new(),
            })
            .await?;
        if outcome.succeeded {
            tracing::info!(app, %ip, "VIP allocated");
            return Ok(ip);
        }
    }
    Err(AllocError::Contended(app.to_owned()))
}

/// Frees the app's VIP, but only while the app does not exist: a removal racing with a new
/// deploy of the same name leaves the VIP to the new app.
pub async fn release(state: &State, app: &str, ip: Ipv4Addr) -> Result<bool, StoreError> {
    let outcome = state
        .store()
        .txn(Txn {
            compare: vec![
                Compare::Absent(keys::app(app)),
                Compare::Value(app_key(app), json(&ip)),
            ],
            success: vec![
                Op::Delete { key: app_key(app) },
                Op::Delete { key: ip_key(ip) },
            ],
            failure: Vec::new(),
        })
        .await?;
    if outcome.succeeded {
        tracing::info!(app, %ip, "VIP released");
    }
    Ok(outcome.succeeded)
}

fn first_free(cidr: Ipv4Net, taken: &std::collections::BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(cidr.network()).checked_add(1)?;
    let last = u32::from(cidr.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_address_skips_network_and_broadcast() {
        let cidr: Ipv4Net = "10.96.0.0/30".parse().expect("cidr");
        let mut taken = std::collections::BTreeSet::new();
        assert_eq!(first_free(cidr, &taken), Some(Ipv4Addr::new(10, 96, 0, 1)));
        taken.insert(Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(first_free(cidr, &taken), Some(Ipv4Addr::new(10, 96, 0, 2)));
        taken.insert(Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(first_free(cidr, &taken), None);
    }
}
