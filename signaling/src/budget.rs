//! Per-address budgets: how much of the tracker's shared state one client address may hold.
//!
//! Issue 24: swarm ids are public and the swarm table and each swarm are bounded, so one
//! address with enough connections filled all 100,000 swarm slots in 5.5 s (every new stream
//! then got `too many swarms on this server`) and one stream's 50,000 peer slots in 2.9 s (a
//! real viewer got `swarm is full`). So every swarm membership is charged to the address of the
//! connection that holds it, and an address holds at most `--max-peers-per-address` of them:
//! with that below both the swarm limit and the per-swarm limit, no single address can fill
//! either, however many connections it opens.
//!
//! Why a budget and not a per-address connection cap: many honest viewers behind one NAT each
//! need one connection and (for our streams) one membership; what an abuser needs is *many
//! memberships*, so that is what is counted. The default (10,000) lets that many viewers, or
//! a hundred WebTorrent clients with a hundred torrents each, share one address. IPv6 clients
//! are counted per /64 (one subscriber's usual allocation: counting single addresses would
//! give each of them 2^64 budgets). Behind a reverse proxy, `--trusted-proxy` makes the client
//! address the one the proxy puts in `X-Forwarded-For`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};

/// The address a budget is kept for: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey(u128);

impl AddrKey {
    /// The key of a client address (IPv4-mapped IPv6 counts as the IPv4 address).
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(u128::from(u32::from(v4))),
                // The /64 prefix, tagged (bit 32) so that no IPv6 key equals an IPv4 one.
                None => AddrKey((u128::from(v6) >> 64 << 64) | 1 << 32),
            },
        }
    }

    /// A key for tests and detached members (the unspecified IPv6 address).
    pub fn unspecified() -> AddrKey {
        AddrKey::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    }
}

const SHARDS: usize = 16;

/// Memberships held per address, against one limit.
pub struct AddrBudget {
    limit: usize,
    shards: Box<[Mutex<HashMap<AddrKey, usize, foldhash::fast::RandomState>>]>,
    shard_of: foldhash::fast::RandomState,
}

impl AddrBudget {
    /// Budgets of `limit` memberships per address.
    pub fn new(limit: usize) -> AddrBudget {
        AddrBudget {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(
        &self,
        k: AddrKey,
    ) -> MutexGuard<'_, HashMap<AddrKey, usize, foldhash::fast::RandomState>> {
        let i = (self.shard_of.hash_one(k) % SHARDS as u64) as usize;
        // Plain counter updates: a panic cannot leave a shard inconsistent.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one membership to `k`; false (and nothing charged) if `k` is at its limit.
    pub fn take(&self, k: AddrKey) -> bool {
        let mut sh = self.shard(k);
        let n = sh.entry(k).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                sh.remove(&k);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back one membership of `k`.
    pub fn give(&self, k: AddrKey) {
        let mut sh = self.shard(k);
        if let Some(n) = sh.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                sh.remove(&k);
            }
        }
    }

    /// Memberships charged to `k` now.
    pub fn held(&self, k: AddrKey) -> usize {
        self.shard(k).get(&k).copied().unwrap_or(0)
    }
}

/// The client address of a request that reached us from `peer`: `peer` itself, unless it is
/// one of the `trusted` proxies; then the rightmost `X-Forwarded-For` entry that is not a
/// trusted proxy (entries to its left were written by the client and prove nothing).
pub fn client_addr<'a>(
    peer: IpAddr,
    trusted: &[IpAddr],
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut last = peer;
    for entry in forwarded_for.rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // A malformed entry: nothing to its left can be trusted either.
            return last;
        };
        if !trusted.contains(&ip) {
            return ip;
        }
        last = ip;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_ipv6_by_64_and_map_ipv4() {
        let k = |s: &str| AddrKey::of(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        // An IPv6 /64 never equals an IPv4 key.
        assert_ne!(k("::"), k("0.0.0.0"));
    }

    #[test]
    fn budget_counts_and_refuses_at_the_limit() {
        let b = AddrBudget::new(2);
        let a = AddrKey::of("10.0.0.1".parse().unwrap());
        assert!(b.take(a) && b.take(a));
        assert!(!b.take(a));
        assert_eq!(b.held(a), 2);
        b.give(a);
        assert!(b.take(a));
        assert!(!AddrBudget::new(0).take(a));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = [ip("10.0.0.1")];
        let xff = ["6.6.6.6, 1.2.3.4"];
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_addr(ip("9.9.9.9"), &proxy, xff.into_iter()),
            ip("9.9.9.9")
        );
        // Trusted proxy: the rightmost entry it appended, not the client's forgery.
        assert_eq!(
            client_addr(ip("10.0.0.1"), &proxy, xff.into_iter()),
            ip("1.2.3.4")
        );
        let chain = [ip("10.0.0.1"), ip("10.0.0.2")];
        let xff2 = ["6.6.6.6, 1.2.3.4", "10.0.0.2"];
        assert_eq!(
            client_addr(ip("10.0.0.1"), &chain, xff2.into_iter()),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &proxy, [].into_iter()),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &proxy, ["junk"].into_iter()),
            ip("10.0.0.1")
        );
    }
}
