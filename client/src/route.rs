//! Leader routing for holds: a batch of holds goes straight to its shard's leader when
//! that leader is one of the client's own endpoints, which saves the hop a node (or a
//! frontend) would otherwise make to forward it.
//!
//! The table (the shard count, and which endpoint leads each shard) comes from
//! `ClusterStatus`. It is refreshed in the background at most once per
//! [`ROUTES_REFRESH_MS`], and only while holds are being sent.
//!
//! Invariant: the table is a hint, never a source of answers. Any endpoint serves any
//! call (a node that does not lead the shard forwards it), so a stale or empty table
//! costs one hop, not a wrong answer. A failed attempt at an endpoint drops it from the
//! table until the next refresh, so a dead leader costs one failed attempt per refresh,
//! not one per batch.
//!
//! Addresses are compared as the nodes advertise them (the `host:port` of `--peers`).
//! A client given only frontends, or nodes behind a NAT, matches none of them; after
//! one table that matched no endpoint, the client stops asking and sends round-robin.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use seatd_proto::v1 as pb;

pub(crate) use crate::limits::ROUTES_REFRESH_MS;
use crate::limits::ROUTING_TABLE_SHARDS_MAX;

pub(crate) struct Routes {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The cluster's shard count; 0 until a table arrived.
    shards: u32,
    /// The endpoint (index into the client's list) leading each shard, if known.
    leader_at: Vec<Option<usize>>,
    refreshed_at: Option<Instant>,
    refreshing: bool,
    /// Routing cannot help this client (one endpoint, or none of them is a node).
    off: bool,
}

/// `host:port` of an endpoint URL, as nodes advertise their addresses.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/')
}

impl Routes {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            state: Mutex::new(State {
                off: !enabled,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a hint rewritten whole on each refresh; a panic elsewhere
        // cannot leave it half-updated in a way that matters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint that leads `event_id`'s shard, if the table knows one.
    pub(crate) fn endpoint_for(&self, event_id: &str) -> Option<usize> {
        let st = self.lock();
        if st.off || st.shards == 0 {
            return None;
        }
        let shard = raft_store::ids::shard_of(event_id, st.shards) as usize;
        st.leader_at.get(shard).copied().flatten()
    }

    /// Whether a refresh should start now; if so, marks one as running (the caller
    /// must finish it with [`Routes::update`] or [`Routes::failed`]).
    pub(crate) fn begin_refresh(&self, now: Instant) -> bool {
        let mut st = self.lock();
        let due = st
            .refreshed_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(ROUTES_REFRESH_MS));
        if st.off || st.refreshing || !due {
            return false;
        }
        st.refreshing = true;
        true
    }

    /// A refresh that got no answer: try again after the usual interval.
    pub(crate) fn failed(&self, now: Instant) {
        let mut st = self.lock();
        st.refreshing = false;
        st.refreshed_at = Some(now);
    }

    /// Takes a new table from a cluster status, for the client's `endpoints` (URLs).
    pub(crate) fn update(&self, status: &pb::ClusterStatus, endpoints: &[String], now: Instant) {
        let endpoint_of = |node: u64| {
            let addr = status.nodes.iter().find(|n| n.id == node)?.addr.as_str();
            endpoints.iter().position(|e| host_port(e) == addr)
        };
        let shards = status
            .shards
            .iter()
            .map(|s| s.shard as usize + 1)
            .max()
            .unwrap_or(0);
        let mut st = self.lock();
        st.refreshing = false;
        st.refreshed_at = Some(now);
        if shards == 0 || shards > ROUTING_TABLE_SHARDS_MAX {
            return;
        }
        let mut leader_at = vec![None; shards];
        for s in &status.shards {
            leader_at[s.shard as usize] = s.leader.and_then(endpoint_of);
        }
        let any_node = status
            .nodes
            .iter()
            .any(|n| endpoints.iter().any(|e| host_port(e) == n.addr));
        st.off = !any_node;
        st.shards = shards as u32;
        st.leader_at = leader_at;
    }

    /// An attempt at `endpoint` failed: route nothing there until the next refresh.
    pub(crate) fn forget(&self, endpoint: usize) {
        let mut st = self.lock();
        for at in st.leader_at.iter_mut() {
            if *at == Some(endpoint) {
                *at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leaders: &[Option<u64>]) -> pb::ClusterStatus {
        pb::ClusterStatus {
            nodes: (1..=3)
                .map(|id| pb::NodeStatus {
                    id,
                    addr: format!("127.0.0.1:700{id}"),
                    reachable: true,
                })
                .collect(),
            shards: leaders
                .iter()
                .enumerate()
                .map(|(i, &leader)| pb::ShardStatus {
                    shard: i as u32,
                    leader,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn endpoints(urls: &[&str]) -> Vec<String> {
        urls.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn holds_go_to_the_endpoint_that_leads_their_shard() {
        let r = Routes::new(true);
        let now = Instant::now();
        assert_eq!(r.endpoint_for("gig"), None, "no table yet");
        assert!(r.begin_refresh(now));
        assert!(!r.begin_refresh(now), "one refresh at a time");
        let eps = endpoints(&["http://127.0.0.1:7003", "127.0.0.1:7001/"]);
        // 8 shards: "gig" is in shard 6, "rock-night" in 3 (pinned in placement.rs).
        let mut leaders = vec![Some(2); 8];
        leaders[6] = Some(3);
        leaders[3] = Some(1);
        r.update(&status(&leaders), &eps, now);
        assert_eq!(r.endpoint_for("gig"), Some(0));
        assert_eq!(r.endpoint_for("rock-night"), Some(1));
        assert_eq!(r.endpoint_for("a"), None, "node 2 is not an endpoint");
        assert!(!r.begin_refresh(now), "not due yet");
        let later = now + Duration::from_millis(ROUTES_REFRESH_MS);
        assert!(r.begin_refresh(later));
        // A failed attempt at endpoint 0 stops routing there.
        r.forget(0);
        assert_eq!(r.endpoint_for("gig"), None);
        assert_eq!(r.endpoint_for("rock-night"), Some(1));
    }

    #[test]
    fn a_client_of_frontends_stops_asking() {
        let r = Routes::new(true);
        let now = Instant::now();
        assert!(r.begin_refresh(now));
        r.update(&status(&[Some(1); 4]), &endpoints(&["10.0.0.9:7400"]), now);
        assert_eq!(r.endpoint_for("gig"), None);
        let later = now + Duration::from_secs(60);
        assert!(!r.begin_refresh(later));
        assert!(!Routes::new(false).begin_refresh(now));
    }

    #[test]
    fn nonsense_tables_are_ignored() {
        let r = Routes::new(true);
        let now = Instant::now();
        let mut s = status(&[Some(1)]);
        s.shards[0].shard = u32::MAX;
        r.update(&s, &endpoints(&["127.0.0.1:7001"]), now);
        assert_eq!(r.endpoint_for("gig"), None);
        r.update(&status(&[]), &endpoints(&["127.0.0.1:7001"]), now);
        assert_eq!(r.endpoint_for("gig"), None);
    }
}
