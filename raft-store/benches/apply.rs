//! How fast the pure state machine decides: holds applied per second on a
//! 100,000-seat event, the time to produce that event's seat map, and the time to
//! apply the creation of the largest event allowed (`SEATS_PER_EVENT_MAX` seats,
//! numbered rows and named seats), which one apply must do under the state lock.
//!
//! Run: `cargo bench -p seatd-raft-store --no-default-features --bench apply`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft_store::layout::{generate, preset, RowLayout, SectionLayout, VenueLayout};
use raft_store::limits::SEATS_PER_EVENT_MAX;
use raft_store::{Batch, Command, CreateEvent, EventId, HoldRequest, Limits, SeatMachine};

// The seatd binary uses mimalloc too; measure with the allocator we ship.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;
const COMMANDS_PER_ENTRY: usize = 1024;

fn stadium() -> (SeatMachine, Vec<String>) {
    let layout = preset("stadium").expect("preset exists");
    let event_id = EventId::new("stadium").expect("valid id");
    let mut m = SeatMachine::new();
    let create = Command::CreateEvent(CreateEvent {
        event_id: event_id.clone(),
        name: "Bench".into(),
        starts_at_ms: T0,
        layout,
        limits: Limits::default(),
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    });
    m.apply(
        1,
        &Batch {
            ts_ms: T0,
            commands: vec![create],
        },
    )
    .pop()
    .unwrap()
    .unwrap();
    let seats = m
        .seat_map(&event_id)
        .unwrap()
        .seats
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    (m, seats)
}

/// Entries of holds covering the venue with blocks of `block` consecutive seats, each
/// by a fresh user (so per-user limits never refuse).
fn hold_entries(seats: &[String], block: impl Fn(usize) -> usize) -> (Vec<Batch>, u64) {
    let event_id = EventId::new("stadium").unwrap();
    let mut commands = Vec::new();
    let mut at = 0;
    while at < seats.len() {
        let n = block(commands.len()).min(seats.len() - at);
        commands.push(Command::Hold(HoldRequest {
            event_id: event_id.clone(),
            user: format!("user-{}", commands.len()),
            seats: seats[at..at + n].to_vec(),
            client_reservation_id: format!("req-{}", commands.len()),
            ttl_ms: None,
            expected_versions: None,
        }));
        at += n;
    }
    let holds = commands.len() as u64;
    let batches = commands
        .chunks(COMMANDS_PER_ENTRY)
        .map(|c| Batch {
            ts_ms: T0 + 1,
            commands: c.to_vec(),
        })
        .collect();
    (batches, holds)
}

fn apply_all(mut m: SeatMachine, batches: &[Batch]) -> SeatMachine {
    for (i, b) in batches.iter().enumerate() {
        for out in m.apply(i as u64 + 2, b) {
            assert!(out.is_ok());
        }
    }
    m
}

fn bench(c: &mut Criterion) {
    let (m, seats) = stadium();
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    for (name, block) in [("hold_1_seat", 1usize), ("hold_1_to_4_seats", 0)] {
        let (batches, holds) = hold_entries(&seats, |n| if block == 0 { n % 4 + 1 } else { block });
        group.throughput(Throughput::Elements(holds));
        group.bench_function(name, |b| {
            b.iter_batched(
                || m.clone(),
                |m| apply_all(m, &batches),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let (batches, _) = hold_entries(&seats, |n| n % 4 + 1);
    let half_held = apply_all(m.clone(), &batches[..batches.len() / 2]);
    let id = EventId::new("stadium").unwrap();
    c.bench_function("seat_map_100k", |b| {
        b.iter(|| half_held.seat_map(&id).unwrap())
    });
    c.bench_function("encode_100k", |b| b.iter(|| half_held.encode()));
}

/// The largest event allowed: 40 sections of rows of 50 numbered seats
/// (`SEATS_PER_EVENT_MAX` seats), or, when `named`, the most named seats that fit
/// `COMMAND_BYTES_MAX` with short names (40 × 100 rows × 100 = 400,000 seats named
/// `S{section}-{n}`, 4 to 8 bytes).
fn largest_event(named: bool) -> Command {
    let layout = if named {
        VenueLayout {
            venue: "Named".into(),
            sections: (0..40)
                .map(|s| SectionLayout {
                    id: format!("S{s}"),
                    rows: (0..100)
                        .map(|r| RowLayout {
                            id: format!("S{s}R{r}"),
                            seats: None,
                            first: None,
                            seat_ids: Some(
                                (0..100).map(|n| format!("S{s}-{}", r * 100 + n)).collect(),
                            ),
                        })
                        .collect(),
                })
                .collect(),
        }
    } else {
        generate("Numbered", 40, (SEATS_PER_EVENT_MAX / 40 / 50) as u32, 50)
    };
    let command = Command::CreateEvent(CreateEvent {
        event_id: EventId::new("largest").unwrap(),
        name: "Largest".into(),
        starts_at_ms: T0,
        layout,
        limits: Limits::default(),
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    });
    assert!(raft_store::limits::check_command_bytes(&command).is_ok());
    command
}

fn bench_create(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_event");
    group.sample_size(10);
    for (name, named) in [("largest_numbered", false), ("largest_named", true)] {
        let entry = Batch {
            ts_ms: T0,
            commands: vec![largest_event(named)],
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                SeatMachine::new,
                |mut m| {
                    assert!(m.apply(1, &entry)[0].is_ok());
                    m
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_create);
criterion_main!(benches);
