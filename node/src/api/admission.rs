//! Who gets served: the local API's admission control, pure state (no sockets, no clock).
//!
//! Every request takes a slot of its client (a ZeroMQ connection, known by its routing
//! identity) and a slot of the node. A client over its own budget, or a node over its
//! total, gets a `busy` reply (code [`BUSY`](pyagent_protocol::api::code::BUSY), with the
//! request's id) instead of service, so one client holding many long polls or flooding
//! requests slows only itself. Busy replies are bounded too: a client that already has
//! [`Limits::busy_replies_per_client`] of them waiting to be sent (it does not read) gets
//! nothing more until it reads, and its requests are dropped unanswered.
//!
//! ```text
//! request ─► admit(client) ─► Serve ─► handler ─► reply ─► finished(client)
//!                          ├► Busy  ─► busy reply ─────────► busy_sent(client)
//!                          └► Drop  (the client is not reading its busy replies)
//! ```

use std::collections::HashMap;

use bytes::Bytes;

/// A client of the API: the routing identity of its ZeroMQ connection.
pub type ClientKey = Bytes;

/// The budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests one client may have in flight.
    pub per_client: usize,
    /// Requests in flight for all clients together.
    pub total: usize,
    /// Busy replies waiting to be sent to one client.
    pub busy_replies_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_client: 16, total: 256, busy_replies_per_client: 64 }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; call [`Admission::finished`] once its reply is sent (or given up).
    Serve,
    /// Reply `busy`; call [`Admission::busy_sent`] once that reply is sent (or given up).
    Busy,
    /// Drop it unanswered: the client is not reading.
    Drop,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    in_flight: usize,
    busy_pending: usize,
}

/// The admission state of one API server.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    total: usize,
    clients: HashMap<ClientKey, Counts>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self { limits, total: 0, clients: HashMap::new() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decides about a new request of `client`.
    pub fn admit(&mut self, client: &ClientKey) -> Verdict {
        let limits = self.limits;
        let total = self.total;
        let counts = self.clients.entry(client.clone()).or_default();
        if counts.in_flight < limits.per_client && total < limits.total {
            counts.in_flight += 1;
            self.total += 1;
            Verdict::Serve
        } else if counts.busy_pending < limits.busy_replies_per_client {
            counts.busy_pending += 1;
            Verdict::Busy
        } else {
            self.forget_if_idle(client);
            Verdict::Drop
        }
    }

    /// A served request of `client` is over.
    pub fn finished(&mut self, client: &ClientKey) {
        if let Some(counts) = self.clients.get_mut(client)
            && counts.in_flight > 0
        {
            counts.in_flight -= 1;
            self.total = self.total.saturating_sub(1);
        }
        self.forget_if_idle(client);
    }

    /// A busy reply to `client` is sent (or given up).
    pub fn busy_sent(&mut self, client: &ClientKey) {
        if let Some(counts) = self.clients.get_mut(client) {
            counts.busy_pending = counts.busy_pending.saturating_sub(1);
        }
        self.forget_if_idle(client);
    }

    /// Requests in flight, all clients.
    pub fn in_flight(&self) -> usize {
        self.total
    }

    /// Clients with anything in flight or pending.
    pub fn active_clients(&self) -> usize {
        self.clients.len()
    }

    fn forget_if_idle(&mut self, client: &ClientKey) {
        if self.clients.get(client).is_some_and(|c| c.in_flight == 0 && c.busy_pending == 0) {
            self.clients.remove(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &'static str) -> ClientKey {
        Bytes::from_static(s.as_bytes())
    }

    fn small() -> Admission {
        Admission::new(Limits { per_client: 2, total: 3, busy_replies_per_client: 1 })
    }

    #[test]
    fn one_client_over_its_budget_does_not_starve_another() {
        let mut a = small();
        let (greedy, polite) = (key("greedy"), key("polite"));
        assert_eq!(a.admit(&greedy), Verdict::Serve);
        assert_eq!(a.admit(&greedy), Verdict::Serve);
        assert_eq!(a.admit(&greedy), Verdict::Busy);
        assert_eq!(a.admit(&polite), Verdict::Serve, "the other client is still served");
        assert_eq!(a.in_flight(), 3);
    }

    #[test]
    fn the_node_total_holds_across_clients() {
        let mut a = small();
        for k in ["a", "b", "c"] {
            assert_eq!(a.admit(&key(k)), Verdict::Serve);
        }
        assert_eq!(a.admit(&key("d")), Verdict::Busy);
        a.finished(&key("a"));
        assert_eq!(a.admit(&key("d")), Verdict::Serve);
    }

    #[test]
    fn a_client_that_does_not_read_busy_replies_is_dropped_not_queued() {
        let mut a = small();
        let k = key("flood");
        a.admit(&k);
        a.admit(&k);
        assert_eq!(a.admit(&k), Verdict::Busy);
        for _ in 0..1000 {
            assert_eq!(a.admit(&k), Verdict::Drop);
        }
        a.busy_sent(&k);
        assert_eq!(a.admit(&k), Verdict::Busy, "once it reads, it hears busy again");
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let mut a = small();
        let k = key("x");
        a.admit(&k);
        a.admit(&k);
        a.admit(&k);
        assert_eq!(a.active_clients(), 1);
        a.finished(&k);
        a.finished(&k);
        a.busy_sent(&k);
        assert_eq!(a.active_clients(), 0);
        assert_eq!(a.in_flight(), 0);
        // Spurious calls change nothing.
        a.finished(&k);
        a.busy_sent(&k);
        assert_eq!(a.in_flight(), 0);
    }
}
