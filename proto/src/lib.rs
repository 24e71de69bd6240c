//! seatd's wire definitions: the client API and the Raft transport as `.proto` files,
//! with their tonic/prost generated code.
//!
//! Empty until the gRPC services land (issue 4). This crate will hold no logic: only
//! the definitions and the code generated from them, built with a vendored protoc so
//! that a fresh machine needs no system protoc.
