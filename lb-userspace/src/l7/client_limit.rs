//! `max_connections_per_client` (http and tcp listeners): open connections per client
//! address (the socket peer, or the client a trusted PROXY header named). A connection
//! beyond the limit is closed as soon as its client is known (right after accept, or after
//! its PROXY header), before TLS or any byte of the request; the refusal is counted
//! (`lb_client_connections_refused_total`). NGINX's `limit_conn` by `$binary_remote_addr`,
//! applied at accept.
//!
//! The count lives with the listener's accept loop: a reload that changes the listener's
//! settings starts a new loop with fresh counts (connections of the old one finish
//! uncounted).
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

/// Open connections per client of one listener. Only clients with an open connection have
/// an entry, so the map is as large as the connections are many.
#[derive(Debug)]
pub struct ClientConnections {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its client's count goes down when it is dropped.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<ClientConnections>,
    client: IpAddr,
}

impl ClientConnections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection of `client`, or None when it has `max` open already.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            client,
        })
    }

    /// Open connections of `client`.
    pub fn open(&self, client: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client).copied().unwrap_or(0)
    }

    /// Clients with an open connection.
    pub fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A new connection of `client` under a listener's optional cap: Ok with the slot to hold
/// while it lasts (None: no cap), or Err when the client is at its cap; then the refusal is
/// counted (`lb_client_connections_refused_total`) and logged, and the caller closes.
pub(super) fn admit_on(
    cap: Option<&Arc<ClientConnections>>,
    client: IpAddr,
    listener: &str,
    meters: &super::observe::ProxyMeters,
) -> Result<Option<ClientSlot>, ()> {
    let Some(cap) = cap else {
        return Ok(None);
    };
    match cap.admit(client) {
        Some(slot) => Ok(Some(slot)),
        None => {
            meters.client_refused(listener);
            tracing::debug!(listener, %client, "per-client connection limit");
            Err(())
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_client_and_a_closed_connection_frees_its_slot() {
        let limit = ClientConnections::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("a"), "::1".parse().expect("b"));
        let a1 = limit.admit(a).expect("first");
        let a2 = limit.admit(a).expect("second");
        assert!(limit.admit(a).is_none(), "third refused");
        let b1 = limit.admit(b).expect("another client has its own count");
        assert_eq!((limit.open(a), limit.open(b), limit.clients()), (2, 1, 2));
        drop(a1);
        let a3 = limit.admit(a).expect("a slot was freed");
        assert!(limit.admit(a).is_none());
        drop((a2, a3, b1));
        assert_eq!(limit.clients(), 0, "no entry without a connection");
    }
}
