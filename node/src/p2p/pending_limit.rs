//! A bound on inbound connections still in their handshakes, per source address.
//!
//! libp2p's `connection_limits` bounds pending inbound connections for the whole node. A
//! host that opens connections and stalls in the multistream/Noise negotiation would fill
//! that bound by itself and keep every legitimate newcomer out until its handshakes time
//! out. This behaviour gives each source IP address its own small share
//! ([`MAX_PENDING_PER_SOURCE`]); an address over it is denied at once (the connection is
//! closed before any handshake work), and the others keep their room. It sits before
//! `connection_limits` in the composed behaviour, so a flooder's denied connections never
//! take one of the node's shared slots.
//!
//! Pure bookkeeping: a slot is taken in `handle_pending_inbound_connection` and given
//! back when the connection is established or fails (`ListenFailure`, which the swarm
//! also reports when another behaviour denies the connection).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Inbound connections one source address may have in their handshakes at once.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// Why an inbound connection was denied.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {limit} connections in their handshakes")]
pub struct TooManyPending {
    pub ip: IpAddr,
    pub limit: usize,
}

/// The behaviour; see the module docs.
#[derive(Debug)]
pub struct PendingPerSource {
    limit: usize,
    pending: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Default for PendingPerSource {
    fn default() -> Self {
        Self::new(MAX_PENDING_PER_SOURCE)
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl PendingPerSource {
    pub fn new(limit: usize) -> Self {
        Self { limit, pending: HashMap::new(), per_ip: HashMap::new() }
    }

    /// Handshakes in progress from `ip`.
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn release(&mut self, id: ConnectionId) {
        let Some(ip) = self.pending.remove(&id) else { return };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for PendingPerSource {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote_addr) else { return Ok(()) };
        let count = self.per_ip.entry(ip).or_default();
        if *count >= self.limit {
            tracing::debug!(%ip, limit = self.limit, "inbound connection denied: too many handshakes from this address");
            return Err(ConnectionDenied::new(TooManyPending { ip, limit: self.limit }));
        }
        *count += 1;
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(failure) => self.release(failure.connection_id),
            FromSwarm::ConnectionEstablished(established) => self.release(established.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/40000").parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_share_and_others_keep_theirs() {
        let mut b = PendingPerSource::new(2);
        let local = addr("10.0.0.1");
        let flooder = addr("10.0.0.66");
        assert!(b.handle_pending_inbound_connection(ConnectionId::new_unchecked(1), &local, &flooder).is_ok());
        assert!(b.handle_pending_inbound_connection(ConnectionId::new_unchecked(2), &local, &flooder).is_ok());
        let denied = b.handle_pending_inbound_connection(ConnectionId::new_unchecked(3), &local, &flooder).unwrap_err();
        let why = denied.downcast_ref::<TooManyPending>().expect("denied for too many handshakes");
        assert_eq!(why.ip.to_string(), "10.0.0.66");
        assert!(b.handle_pending_inbound_connection(ConnectionId::new_unchecked(4), &local, &addr("10.0.0.7")).is_ok());
        // A finished handshake gives its slot back.
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        assert!(b.handle_established_inbound_connection(ConnectionId::new_unchecked(1), peer, &local, &flooder).is_ok());
        assert_eq!(b.pending_from("10.0.0.66".parse().unwrap()), 1);
        assert!(b.handle_pending_inbound_connection(ConnectionId::new_unchecked(5), &local, &flooder).is_ok());
        // Releasing twice or an unknown id changes nothing.
        b.release(ConnectionId::new_unchecked(1));
        b.release(ConnectionId::new_unchecked(99));
        assert_eq!(b.pending_from("10.0.0.66".parse().unwrap()), 2);
        b.release(ConnectionId::new_unchecked(2));
        b.release(ConnectionId::new_unchecked(5));
        assert_eq!(b.pending_from("10.0.0.66".parse().unwrap()), 0);
        assert!(b.per_ip.len() == 1 && b.pending.len() == 1, "only 10.0.0.7's handshake is left");
    }
}
