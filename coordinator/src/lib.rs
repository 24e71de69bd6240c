//! seatd's coordinator: wires the replicated state machine (`raft-store`) to the
//! network (`seatd-proto`). Today it holds the Raft transport over gRPC; the node, the
//! frontend and the dev cluster are built on it next.

pub mod raft_net;
