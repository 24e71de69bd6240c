//! Routing a client call to the replica that can answer it.
//!
//! Every node accepts every call. A call that needs the shard's leader (writes and
//! consistent reads) is served here when this node leads the shard, and otherwise
//! forwarded: to the leader this node knows of, or, when this node does not host the
//! shard (a frontend hosts none), to the leader it last heard of, else to one of the
//! shard's members (which forwards to its leader). A failed forward forgets the hint. A call that may be
//! served by any replica (stale reads) is served locally when the shard is hosted.
//!
//! Invariants:
//! - A client never sees "not leader": a leadership change while a call is served
//!   makes the router try again (the command carries its retry key, so trying again
//!   cannot apply it twice).
//! - Bounded: a call hops between nodes at most [`HOPS_MAX`] times (counted in the
//!   `x-seatd-hops` header, believed only from another node over the peer port), and waits at most `route_wait` for a leader before it
//!   fails with UNAVAILABLE. It never returns an answer from a replica that is not
//!   allowed to give it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::error::Error;
use crate::forward::{self, Answer, Call, Outbound};
use crate::peers::Links;
use crate::process::Process;
use crate::shard::Shard;
use raft_store::raft::NodeId;

pub mod decide;

use decide::Route;

pub use crate::limits::HOPS_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Writes and consistent reads: the shard's leader only.
    Leader,
    /// Stale reads: any replica.
    AnyReplica,
}

impl Process {
    /// Whether this node leads `shard` now, and so decides calls on it here.
    pub fn leads(&self, shard: u32) -> bool {
        self.shards
            .get(&shard)
            .is_some_and(|s| s.is_serving() && s.leader().1)
    }

    /// Where a call on `shard` goes now, and this node's replica when it is served
    /// here.
    fn pick(&self, shard: u32, mode: Mode, hops: u32) -> (Route, Option<Arc<Shard>>) {
        let local = self.shards.get(&shard).filter(|s| s.is_serving());
        let replica = local.map(|s| {
            let (leader, leads) = s.leader();
            decide::Replica { leader, leads }
        });
        // What only a shard not hosted here needs (the hint, the members, a turn) is
        // not looked up on a replica's path: the leader's hot path stays a map lookup.
        let (hint, members, turn) = match replica {
            Some(_) => (None, Vec::new(), 0),
            None => (
                self.hints.lock().ok().and_then(|h| h.get(&shard).copied()),
                self.cluster.members(shard),
                self.turn.fetch_add(1, Ordering::Relaxed),
            ),
        };
        let route = decide::decide(&decide::Known {
            me: self.id,
            mode,
            hops,
            replica,
            hint,
            members: &members,
            reachable: &|n| self.cluster.addr(n).is_some(),
            turn,
        });
        (route, local.cloned())
    }

    /// Records the leaders seen in a cluster status, for shards not hosted here.
    pub fn learn_leaders(&self, status: &seatd_proto::v1::ClusterStatus) {
        let Ok(mut hints) = self.hints.lock() else {
            return;
        };
        for s in status
            .shards
            .iter()
            .filter(|s| !self.shards.contains_key(&s.shard))
        {
            match s.leader {
                Some(l) => hints.insert(s.shard, l),
                None => hints.remove(&s.shard),
            };
        }
    }

    fn forget_leader(&self, shard: u32) {
        if let Ok(mut hints) = self.hints.lock() {
            hints.remove(&shard);
        }
    }

    /// The channel calls for node `id` are forwarded over.
    pub(crate) fn channel_to(&self, id: NodeId) -> Result<Channel, Error> {
        match &self.links {
            Links::Peers(peers) => peers.channel(id, None),
            Links::Clients(clients) => match self.cluster.addr(id) {
                Some(addr) => clients.channel(addr),
                None => Err(Error::Unavailable(format!(
                    "no address known for node {id}"
                ))),
            },
        }
    }

    /// Serves `call` on `shard`: by `local` with this node's replica where this node
    /// may answer it, and elsewhere by forwarding `out` (`forward`), whose answer
    /// becomes a `T`.
    pub async fn routed<T, L, LF>(
        &self,
        shard: u32,
        mode: Mode,
        call: &Call,
        out: &Outbound,
        local: L,
    ) -> Result<T, Error>
    where
        T: Answer,
        L: Fn(Arc<Shard>) -> LF,
        LF: Future<Output = Result<T, Error>>,
    {
        if shard >= self.cluster.shards() {
            return Err(Error::Invalid(format!(
                "shard {shard} does not exist (the cluster has {})",
                self.cluster.shards()
            )));
        }
        let started = Instant::now();
        let deadline = started + self.settings.route_wait;
        let mut backoff =
            seatd_wire::net::Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        let mut last = String::from("no leader known");
        loop {
            match self.pick(shard, mode, call.hops) {
                (Route::Here, Some(s)) => {
                    // Bounded even here: a leader cut off from its quorum does not
                    // learn it at once, and its entries wait until it does.
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, local(s)).await {
                        Ok(Err(Error::NotLeader)) => last = "leadership changed".into(),
                        Ok(Err(Error::Unavailable(m))) => last = m,
                        Ok(done) => return done,
                        Err(_) => last = "the leader did not commit in time".into(),
                    }
                }
                (Route::Forward(to), _) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let channel = self.channel_to(to)?;
                    let sent = forward::send(channel, out, call, left);
                    match tokio::time::timeout(left, sent).await {
                        Ok(Ok(answer)) => return T::from_answer(answer),
                        Ok(Err(st)) if is_retryable(&st) => {
                            self.forget_leader(shard);
                            last = format!("node {to}: {}", st.message())
                        }
                        Ok(Err(st)) => return Err(Error::Remote(st)),
                        Err(_) => {
                            self.forget_leader(shard);
                            last = format!("node {to} did not answer in time")
                        }
                    }
                }
                // The last hop can neither serve nor forward: waiting here would hold
                // the sender's whole budget on one path. Say so at once, so the sender
                // picks again with what it has learned since (a new leader, say).
                (Route::GiveUp, _) => {
                    return Err(Error::Unavailable(format!(
                        "shard {shard}: node {} cannot serve or forward this call ({last})",
                        self.id
                    )));
                }
                (Route::Wait | Route::Here, _) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
        Err(Error::Unavailable(format!(
            "shard {shard}: no replica could answer within {} ms ({last})",
            started.elapsed().as_millis()
        )))
    }
}

/// Statuses that mean "not answered here, try again": the node is unreachable,
/// shutting down, or found no leader itself.
fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}
