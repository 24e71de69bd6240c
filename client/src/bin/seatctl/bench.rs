//! `seatctl bench`: a flash-sale load generator that checks for oversell.
//!
//! It creates the events (rows of 50 seats), then `--clients` virtual buyers loop
//! until time is up or everything is sold out: pick a random row and a random block
//! of 1–4 adjacent seats, try to hold it (a fresh user id per attempt, so per-user
//! limits never refuse a bench hold), then commit or release a share of the holds.
//! At the end it reads every seat map consistently and checks, seat by seat, that no
//! seat was granted to two live holds, that every seat of a live hold is held or sold
//! in the map, that no other seat is (unless some outcomes are unknown), and that the
//! section counts add up. Holds use the event's default TTL (5 minutes), so a run
//! is limited to [`SECS_MAX`]: a hold expiring before the check would look lost.
//!
//! Output: one line of `key=value` pairs; exit 1 when the check fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seatd_client::{pb, Client, Error};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 100_000)]
    pub seats: u32,
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Share of granted holds that are committed (paid with tok_visa).
    #[arg(long, default_value_t = 0.0)]
    pub commit_ratio: f64,
    /// Share of granted holds that are released.
    #[arg(long, default_value_t = 0.0)]
    pub release_ratio: f64,
    #[arg(long, default_value_t = 1)]
    pub events: u32,
    /// Send every hold in its own call instead of gathering concurrent holds
    /// into HoldMany calls (the client library's `batch_holds`).
    #[arg(long)]
    pub no_batch: bool,
    /// Send each batch to the endpoint that leads its shard instead of round-robin
    /// (the client library's `route_to_leaders`).
    #[arg(long)]
    pub route: bool,
    /// Worker threads of the load generator's runtime. One is enough for 64 batched
    /// buyers and spends less CPU than two (threads waking each other), leaving more
    /// of a shared machine to the cluster it measures.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Most worker threads `--threads` may ask for.
pub const THREADS_MAX: usize = 64;

const SEATS_PER_ROW: u32 = 50;
/// Longest run: the check must read the maps before the first hold expires.
const SECS_MAX: u64 = 240;

/// What one buyer saw.
#[derive(Default)]
struct Tally {
    /// (event index, seats) of holds granted and still live at the end (not released).
    live: Vec<(usize, Vec<String>)>,
    granted: u64,
    conflicts: u64,
    other_refusals: u64,
    unknown: u64,
    commits: u64,
    committed_seats: u64,
    hold_us: Vec<u32>,
}

fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted_us[i.min(sorted_us.len() - 1)]) / 1000.0
}

pub async fn run(client: Arc<Client>, args: BenchArgs) -> Result<(String, bool), Error> {
    if args.seats < SEATS_PER_ROW || args.events == 0 || args.clients == 0 {
        return Err(Error::Invalid(
            "need --seats >= 50, --events >= 1 and --clients >= 1".into(),
        ));
    }
    if args.secs > SECS_MAX {
        return Err(Error::Invalid(format!(
            "--secs may be at most {SECS_MAX}: the bench's holds expire after 5 minutes, \
             and the check needs them live"
        )));
    }
    let rows_per_event = (args.seats / args.events / SEATS_PER_ROW).max(1);
    let tag = format!("{:08x}", fastrand::u32(..));
    let mut events = Vec::new();
    for i in 0..args.events {
        let layout = raft_store::layout::generate("Bench Arena", 1, rows_per_event, SEATS_PER_ROW);
        let e = client
            .create_event(pb::CreateEventRequest {
                event_id: format!("bench-{tag}-{i}"),
                name: format!("Bench {tag} {i}"),
                starts_at_ms: 1,
                layout: Some(seatd_client::layout_to_pb(&layout)),
                limits: None,
            })
            .await?;
        events.push(e.event_id);
    }
    let events = Arc::new(events);
    let sold_out = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.secs);
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..args.clients {
        let (client, events, sold_out) = (client.clone(), events.clone(), sold_out.clone());
        let (commit_ratio, release_ratio) = (args.commit_ratio, args.release_ratio);
        buyers.spawn(async move {
            let mut rng = fastrand::Rng::new();
            let mut t = Tally::default();
            let mut n = 0u64;
            while Instant::now() < until && !sold_out.load(Ordering::Relaxed) {
                n += 1;
                let ev = rng.usize(0..events.len());
                let row = raft_store::layout::row_label(rng.usize(0..rows_per_event as usize));
                let len = rng.u32(1..=4);
                let first = rng.u32(1..=SEATS_PER_ROW + 1 - len);
                let seats: Vec<String> =
                    (first..first + len).map(|s| format!("{row}-{s}")).collect();
                let ids: Vec<&str> = seats.iter().map(String::as_str).collect();
                let user = format!("b{b}n{n}");
                let t0 = Instant::now();
                let held = client.hold(&events[ev], &user, &ids, None, None).await;
                t.hold_us
                    .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                let hold = match held {
                    Ok(h) => h,
                    Err(Error::Conflict { .. }) => {
                        t.conflicts += 1;
                        continue;
                    }
                    Err(Error::Unavailable(_)) => {
                        t.unknown += 1;
                        continue;
                    }
                    Err(_) => {
                        t.other_refusals += 1;
                        continue;
                    }
                };
                t.granted += 1;
                let roll = rng.f64();
                if roll < commit_ratio {
                    match client.commit(&hold.hold_id, "tok_visa", None).await {
                        Ok(o) => {
                            t.commits += 1;
                            t.committed_seats += o.seat_ids.len() as u64;
                        }
                        Err(_) => t.unknown += 1,
                    }
                    t.live.push((ev, seats));
                } else if roll < commit_ratio + release_ratio {
                    if client.release(&hold.hold_id, &user).await.is_err() {
                        t.live.push((ev, seats));
                        t.unknown += 1;
                    }
                } else {
                    t.live.push((ev, seats));
                }
            }
            t
        });
    }
    // Stop early once every event is sold out (or fully held).
    let watcher = {
        let (client, events, sold_out) = (client.clone(), events.clone(), sold_out.clone());
        tokio::spawn(async move {
            while Instant::now() < until && !sold_out.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut left = 0;
                for e in events.iter() {
                    match client.event(e).await {
                        Ok(ev) => left += ev.available,
                        Err(_) => left += 1,
                    }
                }
                if left == 0 {
                    sold_out.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let mut all = Tally::default();
    while let Some(r) = buyers.join_next().await {
        let t = r.map_err(|e| Error::Unavailable(format!("buyer task: {e}")))?;
        all.live.extend(t.live);
        all.granted += t.granted;
        all.conflicts += t.conflicts;
        all.other_refusals += t.other_refusals;
        all.unknown += t.unknown;
        all.commits += t.commits;
        all.committed_seats += t.committed_seats;
        all.hold_us.extend(t.hold_us);
    }
    let elapsed = started.elapsed().as_secs_f64();
    watcher.abort();

    // The check: every live hold's seats distinct, and the maps agree with them.
    let mut oversell = 0u64;
    let mut claimed: Vec<std::collections::HashSet<&str>> =
        vec![std::collections::HashSet::new(); events.len()];
    for (ev, seats) in &all.live {
        for s in seats {
            if !claimed[*ev].insert(s.as_str()) {
                oversell += 1;
            }
        }
    }
    let mut taken_in_maps = 0u64;
    let mut sold_in_maps = 0u64;
    for (i, e) in events.iter().enumerate() {
        let map = client.seat_map(e, false).await?;
        for s in &map.sections {
            let counted = u64::from(s.available) + u64::from(s.held) + u64::from(s.sold);
            if counted != u64::from(s.capacity) {
                oversell += 1;
            }
            taken_in_maps += u64::from(s.held) + u64::from(s.sold);
            sold_in_maps += u64::from(s.sold);
        }
        for seat in &map.seats {
            let taken = seat.state != pb::SeatState::Available as i32;
            let ours = claimed[i].contains(seat.id.as_str());
            // A live hold's seat must be taken; a taken seat must be a live hold's,
            // unless an unknown outcome may have taken it.
            if (ours && !taken) || (taken && !ours && all.unknown == 0) {
                oversell += 1;
            }
        }
    }
    let claimed_seats: u64 = claimed.iter().map(|c| c.len() as u64).sum();
    // Unknown outcomes may have held or sold more than the buyers know of, never less.
    let unexplained = if all.unknown == 0 {
        taken_in_maps.abs_diff(claimed_seats) + sold_in_maps.abs_diff(all.committed_seats)
    } else {
        claimed_seats.saturating_sub(taken_in_maps)
            + all.committed_seats.saturating_sub(sold_in_maps)
    };
    oversell += unexplained;
    all.hold_us.sort_unstable();
    let decisions = all.granted + all.conflicts;
    let line = format!(
        "decisions_per_s={:.0} holds_per_s={:.0} conflicts={} commits_per_s={:.0} \
         p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} oversell={} holds={} refused={} unknown={} \
         held_seats={} sold_seats={} secs={:.1}",
        decisions as f64 / elapsed,
        all.granted as f64 / elapsed,
        all.conflicts,
        all.commits as f64 / elapsed,
        percentile(&all.hold_us, 0.50),
        percentile(&all.hold_us, 0.99),
        percentile(&all.hold_us, 0.999),
        oversell,
        all.granted,
        all.other_refusals,
        all.unknown,
        taken_in_maps - sold_in_maps,
        sold_in_maps,
        elapsed
    );
    Ok((line, oversell == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        assert_eq!(percentile(&[1000, 2000, 3000], 0.5), 2.0);
        assert_eq!(percentile(&[1000, 2000, 3000], 0.999), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
