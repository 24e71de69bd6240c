//! The generated code and the reflection descriptor describe the same API.

use prost::Message;

#[test]
fn descriptor_set_names_both_services_and_their_methods() {
    let fds = prost_types::FileDescriptorSet::decode(seatd_proto::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<(String, Vec<String>)> = fds
        .file
        .iter()
        .flat_map(|f| {
            f.service.iter().map(move |s| {
                (
                    format!("{}.{}", f.package(), s.name()),
                    s.method.iter().map(|m| m.name().to_string()).collect(),
                )
            })
        })
        .collect();
    let seats = services
        .iter()
        .find(|(n, _)| n == "seatd.v1.Seats")
        .expect("client service");
    for m in [
        "CreateEvent",
        "ListEvents",
        "GetSeatMap",
        "Hold",
        "Commit",
        "Release",
        "GetHold",
        "GetOrder",
        "ClusterStatus",
    ] {
        assert!(seats.1.iter().any(|x| x == m), "Seats lacks {m}");
    }
    let raft = services
        .iter()
        .find(|(n, _)| n == "seatd.raft.v1.Raft")
        .expect("raft service");
    assert_eq!(
        raft.1,
        [
            "Vote",
            "AppendEntries",
            "InstallSnapshot",
            "AppendStream",
            "LocalStatus"
        ]
    );
}

#[test]
fn messages_round_trip_and_garbage_is_an_error() {
    use seatd_proto::v1::{HoldRequest, SeatVersion};
    let req = HoldRequest {
        event_id: "ev".into(),
        user_id: "u1".into(),
        seat_ids: vec!["A-1".into(), "A-2".into()],
        client_reservation_id: "r1".into(),
        ttl_ms: Some(60_000),
        expected_versions: vec![3, 4],
    };
    let bytes = req.encode_to_vec();
    assert_eq!(HoldRequest::decode(bytes.as_slice()).unwrap(), req);
    assert!(SeatVersion::decode(&[0xff, 0xff, 0xff][..]).is_err());
}
