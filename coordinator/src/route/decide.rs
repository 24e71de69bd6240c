//! Where a call goes: a plain function of what this process knows right now.
//!
//! [`decide`] reads no clock, takes no lock and does no I/O: its input ([`Known`]) is
//! a snapshot of this process's replica of the shard (if any), the leader hint, the
//! shard's members, the hop count and a round-robin turn, so every routing rule is
//! unit-tested from a table below. The caller ([`super`]'s `routed`) acts on the
//! answer: serve, forward, wait and look again, or give up.
//!
//! The rules, in order:
//! 1. A replica hosted here that serves answers stale reads itself, and leader-only
//!    calls when it leads; otherwise it forwards to the leader it knows (when hops are
//!    left and the leader is reachable), else waits for an election.
//! 2. Not hosted here (a frontend hosts nothing; a shard may have moved): out of hops
//!    means give up at once, so the sender picks again with what it knows by then.
//! 3. Else the leader last heard of, if reachable; else one of the shard's members,
//!    never this process itself (a node whose group failed is a member that cannot
//!    answer), in turn.

use raft_store::raft::NodeId;

use super::{Mode, HOPS_MAX};

/// This process's replica of the shard, when it hosts one that serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The leader this replica knows of (itself included).
    pub leader: Option<NodeId>,
    /// Whether this replica is the leader.
    pub leads: bool,
}

/// What the router knows when it decides.
pub struct Known<'a> {
    /// This process's node id (0 on a frontend, which is no node).
    pub me: NodeId,
    pub mode: Mode,
    /// How often the call was forwarded before it reached this process.
    pub hops: u32,
    pub replica: Option<Replica>,
    /// The leader last heard of, for a shard not hosted here.
    pub hint: Option<NodeId>,
    /// The nodes the shard is placed on.
    pub members: &'a [NodeId],
    /// Whether this process knows how to reach a node.
    pub reachable: &'a dyn Fn(NodeId) -> bool,
    /// A round-robin counter, for spreading calls over members.
    pub turn: usize,
}

/// Where the call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Served by this process's replica.
    Here,
    /// Forwarded to this node.
    Forward(NodeId),
    /// Nobody can take it yet (no leader known): wait and decide again.
    Wait,
    /// This process can neither serve nor forward it: answer UNAVAILABLE now.
    GiveUp,
}

/// Where a call on one shard goes (see the module doc for the rules).
pub fn decide(k: &Known<'_>) -> Route {
    let hops_left = k.hops < HOPS_MAX;
    if let Some(r) = k.replica {
        if k.mode == Mode::AnyReplica || r.leads {
            return Route::Here;
        }
        return match r.leader {
            Some(l) if l != k.me && hops_left && (k.reachable)(l) => Route::Forward(l),
            _ if !hops_left => Route::GiveUp,
            _ => Route::Wait,
        };
    }
    if !hops_left {
        return Route::GiveUp;
    }
    if let Some(l) = k.hint.filter(|l| *l != k.me && (k.reachable)(*l)) {
        return Route::Forward(l);
    }
    let others = || {
        k.members
            .iter()
            .copied()
            .filter(|m| *m != k.me && (k.reachable)(*m))
    };
    match others().count() {
        0 => Route::Wait,
        n => others().nth(k.turn % n).map_or(Route::Wait, Route::Forward),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: [NodeId; 3] = [1, 2, 3];

    fn leader(l: NodeId, me: NodeId) -> Option<Replica> {
        Some(Replica {
            leader: Some(l),
            leads: l == me,
        })
    }

    const NO_LEADER: Option<Replica> = Some(Replica {
        leader: None,
        leads: false,
    });

    #[test]
    fn the_routing_table() {
        let all = |_: NodeId| true;
        let not_3 = |n: NodeId| n != 3;
        // (case, me, mode, hops, replica, hint, reachable, turn, route)
        #[allow(clippy::type_complexity)]
        let table: &[(
            &str,
            NodeId,
            Mode,
            u32,
            Option<Replica>,
            Option<NodeId>,
            &dyn Fn(NodeId) -> bool,
            usize,
            Route,
        )] = &[
            (
                "leader is this node",
                1,
                Mode::Leader,
                0,
                leader(1, 1),
                None,
                &all,
                0,
                Route::Here,
            ),
            (
                "leader known elsewhere",
                1,
                Mode::Leader,
                0,
                leader(2, 1),
                None,
                &all,
                0,
                Route::Forward(2),
            ),
            (
                "leader known, last hop: give up",
                1,
                Mode::Leader,
                HOPS_MAX,
                leader(2, 1),
                None,
                &all,
                0,
                Route::GiveUp,
            ),
            (
                "leader known but unreachable",
                1,
                Mode::Leader,
                0,
                leader(3, 1),
                None,
                &not_3,
                0,
                Route::Wait,
            ),
            (
                "no leader yet: wait",
                1,
                Mode::Leader,
                0,
                NO_LEADER,
                None,
                &all,
                0,
                Route::Wait,
            ),
            (
                "no leader, last hop: give up",
                1,
                Mode::Leader,
                HOPS_MAX,
                NO_LEADER,
                None,
                &all,
                0,
                Route::GiveUp,
            ),
            (
                "stale read on a follower",
                1,
                Mode::AnyReplica,
                0,
                leader(2, 1),
                None,
                &all,
                0,
                Route::Here,
            ),
            (
                "stale read, last hop, still here",
                1,
                Mode::AnyReplica,
                HOPS_MAX,
                NO_LEADER,
                None,
                &all,
                0,
                Route::Here,
            ),
            (
                "frontend with a hint",
                0,
                Mode::Leader,
                0,
                None,
                Some(3),
                &all,
                0,
                Route::Forward(3),
            ),
            (
                "frontend, stale read too",
                0,
                Mode::AnyReplica,
                0,
                None,
                Some(2),
                &all,
                0,
                Route::Forward(2),
            ),
            (
                "frontend, no hint: a member",
                0,
                Mode::Leader,
                0,
                None,
                None,
                &all,
                4,
                Route::Forward(2),
            ),
            (
                "frontend, hint unreachable: a reachable member",
                0,
                Mode::Leader,
                0,
                None,
                Some(3),
                &not_3,
                1,
                Route::Forward(2),
            ),
            (
                "moved away: forward to a member, never itself",
                2,
                Mode::Leader,
                0,
                None,
                None,
                &all,
                1,
                Route::Forward(3),
            ),
            (
                "hint names this node (stale): a member instead",
                2,
                Mode::Leader,
                0,
                None,
                Some(2),
                &all,
                0,
                Route::Forward(1),
            ),
            (
                "not hosted, out of hops",
                1,
                Mode::Leader,
                HOPS_MAX,
                None,
                Some(2),
                &all,
                0,
                Route::GiveUp,
            ),
            (
                "not hosted, nobody reachable",
                0,
                Mode::Leader,
                0,
                None,
                None,
                &|_| false,
                0,
                Route::Wait,
            ),
        ];
        for (case, me, mode, hops, replica, hint, reachable, turn, want) in table {
            let k = Known {
                me: *me,
                mode: *mode,
                hops: *hops,
                replica: *replica,
                hint: *hint,
                members: &MEMBERS,
                reachable: *reachable,
                turn: *turn,
            };
            assert_eq!(decide(&k), *want, "{case}");
        }
    }

    #[test]
    fn members_are_taken_in_turn() {
        let all = |_: NodeId| true;
        let picks: Vec<Route> = (0..4)
            .map(|turn| {
                decide(&Known {
                    me: 1,
                    mode: Mode::Leader,
                    hops: 0,
                    replica: None,
                    hint: None,
                    members: &MEMBERS,
                    reachable: &all,
                    turn,
                })
            })
            .collect();
        use Route::Forward as F;
        assert_eq!(picks, [F(2), F(3), F(2), F(3)]);
    }
}
