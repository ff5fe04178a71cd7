//! The per-client-address connection cap: without it one client (or three slow ones from the
//! same host) can hold every `max_connections` slot and lock everyone else out. Addresses are
//! compared in canonical form, so an IPv4 client seen through an IPv6 socket counts once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections per client address.
pub(super) struct Peers {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection of one address; dropping it frees the seat.
pub(super) struct Seat {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    pub(super) fn new(limit: usize) -> Arc<Peers> {
        Arc::new(Peers {
            limit: limit.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A seat for a new connection from `ip`, or `None` when that address holds `limit`.
    pub(super) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Seat> {
        let ip = ip.to_canonical();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Seat {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.peers.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_seats() {
        let peers = Peers::new(2);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let first = peers.enter(a).expect("first");
        let _second = peers.enter(mapped).expect("second, the same address");
        assert!(peers.enter(a).is_none(), "a third from the same address");
        let _other = peers.enter(b).expect("another address still gets in");
        drop(first);
        assert!(peers.enter(a).is_some(), "a freed seat is reused");
    }
}
