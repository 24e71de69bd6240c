//! One process's shared state ([`Process`]): the cluster's shape, the shards hosted
//! here, how this process reaches the others, and the settings every layer reads.
//! Built by the entry points (`node`, `frontend`), read by everything below them: the
//! API, the router, the cluster views. It imports no layer above the shards, so no
//! layer that reads it imports an entry point.
//!
//! Invariants:
//! - A frontend's process has id 0 (no node's), no shards, no store and no gates;
//!   it reaches nodes on their client ports. A node's reaches its peers over mutual
//!   TLS.
//! - Client addresses learned from answers are bounded (`ADDR_BYTES_MAX`) and only
//!   for nodes of the cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use raft_store::raft::NodeId;
use raft_store::storage::Store;

use crate::clock::Clock;
use crate::ids::IdGen;
use crate::limits::ADDR_BYTES_MAX;
use crate::payment::PaymentGateway;
use crate::peers::{ClientChannels, Links};
use crate::placement::Cluster;
use crate::raft_net::VoteGate;
use crate::shard::Shard;

/// Bounds on how long the node waits for others.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a call waits for a shard leader before UNAVAILABLE.
    pub route_wait: Duration,
    /// How long a charge may take before its outcome counts as unknown.
    pub payment_timeout: Duration,
    /// How long a shutdown waits for calls in flight.
    pub drain_timeout: Duration,
    /// Holds one user may ask for per second, counted on the shard's leader where
    /// holds are decided (0: no limit). Unused on a frontend.
    pub holds_per_user_per_s: u32,
    /// Calls without a valid token one client address may make per second where
    /// tokens are checked (0: no limit; unused without `--auth-keys`).
    pub anonymous_calls_per_address_per_s: u32,
    /// Whether the process exits (with the node's group-failure exit code, 3) when one of its
    /// Raft groups stops by itself. Off only for in-process tests that look at the
    /// failed state.
    pub exit_on_group_failure: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            route_wait: Duration::from_secs(5),
            payment_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(10),
            holds_per_user_per_s: 20,
            anonymous_calls_per_address_per_s: 50,
            exit_on_group_failure: true,
        }
    }
}

/// One process's shared state: what the API, the router and (on a node) the shards'
/// background tasks read. A node hosts shards; a frontend is a process that hosts
/// none and forwards every call ([`Process::frontend`]).
pub struct Process {
    pub id: NodeId,
    pub cluster: Cluster,
    pub shards: HashMap<u32, Arc<Shard>>,
    pub settings: Settings,
    pub gateway: Arc<dyn PaymentGateway>,
    /// How this process reaches the nodes it forwards calls to.
    pub(crate) links: Links,
    /// Where each node serves clients, as the nodes advertise it.
    client_addrs: std::sync::RwLock<BTreeMap<NodeId, String>>,
    /// `None` on a frontend, which stores nothing.
    pub(crate) store: Option<Store>,
    /// The round-robin turn for picking a member of a shard not hosted here.
    pub(crate) turn: AtomicUsize,
    /// The leader last seen for each shard this process does not host.
    pub(crate) hints: std::sync::Mutex<HashMap<u32, NodeId>>,
    pub(crate) hold_limiter: crate::admission::HoldLimiter,
    /// Each hosted shard's rejoin gate (none on a frontend).
    pub gates: HashMap<u32, VoteGate>,
    ids: IdGen,
}

/// What a node's process is built from: the shards it hosts and their store.
pub(crate) struct Hosted {
    pub id: NodeId,
    pub cluster: Cluster,
    pub shards: HashMap<u32, Arc<Shard>>,
    pub settings: Settings,
    pub gateway: Arc<dyn PaymentGateway>,
    pub store: Store,
    pub gates: HashMap<u32, VoteGate>,
    /// The client address this node advertises.
    pub advertise: String,
}

impl Process {
    /// The state of a node: the shards it hosts, reaching its peers by `links`.
    pub(crate) fn node(hosted: Hosted, links: Links, clock: &dyn Clock) -> Self {
        let Hosted {
            id,
            cluster,
            shards,
            settings,
            gateway,
            store,
            gates,
            advertise,
        } = hosted;
        assert!(id != 0, "node id 0 is a frontend's");
        Self {
            id,
            cluster,
            shards,
            settings,
            gateway,
            links,
            client_addrs: std::sync::RwLock::new(BTreeMap::from([(id, advertise)])),
            store: Some(store),
            turn: AtomicUsize::new(0),
            hints: Default::default(),
            hold_limiter: crate::admission::HoldLimiter::new(settings.holds_per_user_per_s),
            gates,
            ids: IdGen::new(id, clock.now_ms()),
        }
    }

    /// The state of a process that hosts no shard and forwards every call: a
    /// frontend. Its id 0 is no node's.
    pub fn frontend(cluster: Cluster, settings: Settings, clock: &dyn Clock) -> Self {
        Self::frontend_over(cluster, settings, clock, None)
    }

    /// [`Process::frontend`] that reaches the nodes' client ports over TLS when
    /// `nodes_tls` is given.
    pub fn frontend_over(
        cluster: Cluster,
        settings: Settings,
        clock: &dyn Clock,
        nodes_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        // A frontend's cluster shape holds the nodes' client addresses.
        let client_addrs = std::sync::RwLock::new(cluster.nodes().clone());
        Self {
            id: 0,
            cluster,
            shards: HashMap::new(),
            settings,
            gateway: Arc::new(crate::payment::TestGateway::default()),
            links: Links::Clients(ClientChannels::new(nodes_tls)),
            client_addrs,
            store: None,
            turn: AtomicUsize::new(0),
            hints: Default::default(),
            hold_limiter: crate::admission::HoldLimiter::new(settings.holds_per_user_per_s),
            gates: HashMap::new(),
            ids: IdGen::new(0, clock.now_ms()),
        }
    }

    /// Where node `id` serves clients, if known yet.
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        let addrs = self.client_addrs.read().unwrap_or_else(|p| p.into_inner());
        addrs.get(&id).cloned()
    }

    /// Records where node `id` serves clients (from its own answer). Ids outside the
    /// cluster and oversized addresses are ignored.
    pub(crate) fn learn_client_addr(&self, id: NodeId, addr: &str) {
        if !self.cluster.nodes().contains_key(&id) || addr.is_empty() || addr.len() > ADDR_BYTES_MAX
        {
            return;
        }
        let mut addrs = self.client_addrs.write().unwrap_or_else(|p| p.into_inner());
        if addrs.get(&id).map(String::as_str) != Some(addr) {
            addrs.insert(id, addr.to_string());
        }
    }

    /// A fresh id for a retry key or an event the caller did not name.
    pub fn fresh_id(&self, prefix: &str) -> String {
        self.ids.next(prefix)
    }
}
