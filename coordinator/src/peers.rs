//! Channels to the other processes of a cluster: mutual-TLS channels to nodes' peer
//! ports (what a node uses, for Raft and for forwarding calls to a shard's leader),
//! and plaintext channels to nodes' client ports (what a frontend uses).
//!
//! Every channel is lazy (it connects on first use and reconnects by itself) and
//! shared: one HTTP/2 connection per peer carries every shard's Raft traffic and every
//! forwarded call, so a node with 8 shards keeps one connection per peer, not 8.
//!
//! Invariant: a peer channel to node N accepts only the certificate that names N
//! ([`crate::tls::PeerTls::client`]), so a node that moved, or an address that now
//! belongs to someone else, cannot answer in N's name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_store::raft::NodeId;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::tls::PeerTls;

/// How long a connection attempt to another process may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Mutual-TLS channels to nodes' peer ports, by node id.
#[derive(Clone)]
pub struct PeerChannels {
    tls: PeerTls,
    /// Where each node's peer port is now (`--peers`). Raft's membership remembers
    /// the address a node had when it joined; this book wins, so a node that moved
    /// (a replaced machine, a dev cluster restarted on new ports) is found.
    book: Arc<HashMap<NodeId, String>>,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Whether each peer answered its last message: a change is logged once, instead
    /// of every shard logging every failed retry.
    reachable: Arc<Mutex<HashMap<NodeId, bool>>>,
}

impl PeerChannels {
    pub fn new(tls: PeerTls, book: HashMap<NodeId, String>) -> Self {
        Self {
            tls,
            book: Arc::new(book),
            channels: Default::default(),
            reachable: Default::default(),
        }
    }

    /// This node's id (the one its certificate names).
    pub fn me(&self) -> NodeId {
        self.tls.node
    }

    /// Node `id`'s peer address: the book's, else `remembered` (Raft's membership).
    pub fn addr(&self, id: NodeId, remembered: Option<&str>) -> Option<String> {
        self.book
            .get(&id)
            .cloned()
            .or_else(|| remembered.map(str::to_string))
    }

    /// The channel to node `id`'s peer port.
    pub fn channel(&self, id: NodeId, remembered: Option<&str>) -> Result<Channel, Error> {
        let addr = self
            .addr(id, remembered)
            .ok_or_else(|| Error::Unavailable(format!("no address known for node {id}")))?;
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, c)) = map.get(&id) {
            if *known == addr {
                return Ok(c.clone());
            }
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(self.tls.client(id)))
            .map_err(|e| Error::Internal(format!("node {id} at {addr}: not an address: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(id, (addr, channel.clone()));
        Ok(channel)
    }

    /// Records whether node `id` answered, logging changes once.
    pub fn observe(&self, id: NodeId, ok: bool) {
        let mut map = self.reachable.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.insert(id, ok);
        match (before, ok) {
            (Some(true) | None, false) => tracing::warn!(peer = id, "peer unreachable"),
            (Some(false), true) => tracing::info!(peer = id, "peer reachable again"),
            _ => {}
        }
    }
}

/// Channels to client ports, by address (a frontend's links to the nodes): plaintext,
/// or TLS when the nodes serve their client ports over it (`--nodes-ca`).
#[derive(Clone, Default)]
pub struct ClientChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientChannels {
    pub fn new(tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        Self {
            channels: Arc::default(),
            tls,
        }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let bad =
            |e: tonic::transport::Error| Error::Internal(format!("node address {addr:?}: {e}"));
        let endpoint = match &self.tls {
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(bad)?,
            None => Endpoint::from_shared(format!("http://{addr}")).map_err(bad)?,
        };
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// How this process reaches the nodes it forwards calls to.
#[derive(Clone)]
pub enum Links {
    /// A node: other nodes' peer ports, over mutual TLS.
    Peers(PeerChannels),
    /// A frontend: nodes' client ports, whose addresses the cluster's shape holds.
    Clients(ClientChannels),
}
