//! What seatctl prints: one JSON document per command with `--json` (keys are a
//! contract, documented in README.md), or text for people.

use std::time::{Duration, UNIX_EPOCH};

use seatd_client::{hold_state_name, pb, Error};
use serde_json::{json, Value};

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn sale_name(s: i32) -> &'static str {
    match pb::SaleState::try_from(s) {
        Ok(pb::SaleState::OnSale) => "on_sale",
        Ok(pb::SaleState::Stopped) => "stopped",
        Ok(pb::SaleState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn seat_state_name(s: i32) -> &'static str {
    match pb::SeatState::try_from(s) {
        Ok(pb::SeatState::Available) => "available",
        Ok(pb::SeatState::Held) => "held",
        Ok(pb::SeatState::Sold) => "sold",
        _ => "unknown",
    }
}

pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "event_id": e.event_id,
        "name": e.name,
        "venue": e.venue,
        "starts_at": rfc3339(e.starts_at_ms),
        "shard": e.shard,
        "sale": sale_name(e.sale),
        "capacity": e.capacity,
        "available": e.available,
    })
}

pub fn event_text(e: &pb::Event) -> String {
    format!(
        "{}  {:?} at {}, {}  ({} of {} seats available, {}, shard {})",
        e.event_id,
        e.name,
        e.venue,
        rfc3339(e.starts_at_ms),
        e.available,
        e.capacity,
        sale_name(e.sale),
        e.shard
    )
}

pub fn events_json(list: &pb::ListEventsResponse) -> Value {
    json!({
        "events": list.events.iter().map(event_json).collect::<Vec<_>>(),
        "cache_age_ms": list.cache_age_ms,
    })
}

pub fn hold_json(h: &pb::Hold) -> Value {
    json!({
        "hold_id": h.hold_id,
        "event_id": h.event_id,
        "user": h.user_id,
        "request_id": h.client_reservation_id,
        "state": hold_state_name(h.state),
        "seats": h.seats.iter().map(|s| s.seat_id.clone()).collect::<Vec<_>>(),
        "versions": h.seats.iter().map(|s| s.version).collect::<Vec<_>>(),
        "created_at": rfc3339(h.created_at_ms),
        "expires_at": rfc3339(h.expires_at_ms),
        "by": actor_json(h.by.as_ref()),
    })
}

/// Who made a change (the audit trail): `{"subject", "role"}`, or null.
fn actor_json(a: Option<&pb::Actor>) -> Value {
    a.map_or(
        Value::Null,
        |a| json!({"subject": a.subject, "role": a.role}),
    )
}

fn actor_text(a: Option<&pb::Actor>) -> String {
    a.map_or(String::new(), |a| {
        format!(" (by {}, {})", a.subject, a.role)
    })
}

pub fn holds_json(page: &pb::ListHoldsResponse) -> Value {
    json!({
        "holds": page.holds.iter().map(hold_json).collect::<Vec<_>>(),
        "next_after": page.next_after,
    })
}

pub fn holds_text(page: &pb::ListHoldsResponse) -> String {
    let mut lines: Vec<String> = page.holds.iter().map(hold_text).collect();
    if lines.is_empty() {
        lines.push("no holds".into());
    }
    if let Some(next) = page.next_after {
        lines.push(format!("more: --after {next}"));
    }
    lines.join("\n")
}

pub fn hold_text(h: &pb::Hold) -> String {
    let seats: Vec<&str> = h.seats.iter().map(|s| s.seat_id.as_str()).collect();
    format!(
        "hold {} ({}): {} for {}, expires {}{}",
        h.hold_id,
        hold_state_name(h.state),
        seats.join(","),
        h.user_id,
        rfc3339(h.expires_at_ms),
        actor_text(h.by.as_ref())
    )
}

pub fn order_json(o: &pb::Order) -> Value {
    json!({
        "order_id": o.order_id,
        "hold_id": o.hold_id,
        "user": o.user_id,
        "seats": o.seat_ids,
        "payment_ref": o.payment_ref,
        "created_at": rfc3339(o.created_at_ms),
        "by": actor_json(o.by.as_ref()),
    })
}

pub fn order_text(o: &pb::Order) -> String {
    format!(
        "order {}: {} for {} (hold {}, payment {})",
        o.order_id,
        o.seat_ids.join(","),
        o.user_id,
        o.hold_id,
        o.payment_ref
    )
}

pub fn seat_map_json(m: &pb::SeatMap) -> Value {
    let seats: Vec<Value> = m
        .seats
        .iter()
        .map(|s| {
            let row = m.rows.get(s.row as usize);
            let section = row
                .and_then(|r| m.sections.get(r.section as usize))
                .map(|s| s.section.as_str())
                .unwrap_or("");
            json!({
                "id": s.id,
                "section": section,
                "row": row.map(|r| r.id.as_str()).unwrap_or(""),
                "state": seat_state_name(s.state),
                "version": s.version,
            })
        })
        .collect();
    json!({
        "event_id": m.event_id,
        "shard": m.shard,
        "index": m.applied_index,
        "cache_age_ms": m.cache_age_ms,
        "sections": m.sections.iter().map(|s| json!({
            "section": s.section,
            "capacity": s.capacity,
            "available": s.available,
            "held": s.held,
            "sold": s.sold,
        })).collect::<Vec<_>>(),
        "seats": seats,
    })
}

/// The map drawn row by row: `.` available, `h` held, `X` sold.
pub fn seat_map_text(m: &pb::SeatMap) -> String {
    let mut out = format!(
        "{}  (shard {}, log index {}{})\nlegend: . available   h held   X sold\n",
        m.event_id,
        m.shard,
        m.applied_index,
        if m.cache_age_ms > 0 {
            format!(", cached {} ms ago", m.cache_age_ms)
        } else {
            String::new()
        }
    );
    let label_width = m.rows.iter().map(|r| r.id.len()).max().unwrap_or(1);
    let mut seats = m.seats.iter().peekable();
    let mut section_shown = None;
    for (row_index, row) in m.rows.iter().enumerate() {
        if section_shown != Some(row.section) {
            if let Some(s) = m.sections.get(row.section as usize) {
                out.push_str(&format!(
                    "\n{}  ({} available, {} held, {} sold of {})\n",
                    s.section, s.available, s.held, s.sold, s.capacity
                ));
            }
            section_shown = Some(row.section);
        }
        let mut line = format!("  {:>label_width$}  ", row.id);
        while let Some(seat) = seats.next_if(|s| s.row as usize == row_index) {
            line.push(match pb::SeatState::try_from(seat.state) {
                Ok(pb::SeatState::Available) => '.',
                Ok(pb::SeatState::Held) => 'h',
                Ok(pb::SeatState::Sold) => 'X',
                _ => '?',
            });
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

pub fn status_json(s: &pb::ClusterStatus) -> Value {
    json!({
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "addr": n.addr,
            "reachable": n.reachable,
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(|sh| json!({
            "shard": sh.shard,
            "leader": sh.leader,
            "members": sh.members,
            "applied": sh.applied_index,
            "term": sh.term,
        })).collect::<Vec<_>>(),
    })
}

pub fn status_text(s: &pb::ClusterStatus) -> String {
    let mut out = String::from("nodes:\n");
    for n in &s.nodes {
        out.push_str(&format!(
            "  {}  {}  {}\n",
            n.id,
            n.addr,
            if n.reachable { "up" } else { "UNREACHABLE" }
        ));
    }
    out.push_str("shards:\n");
    for sh in &s.shards {
        let leader = sh
            .leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into());
        out.push_str(&format!(
            "  {:>3}  leader {}  members {:?}  applied {}  term {}\n",
            sh.shard, leader, sh.members, sh.applied_index, sh.term
        ));
    }
    out
}

pub fn error_json(e: &Error) -> Value {
    let mut body = json!({"code": e.code(), "message": e.message()});
    if let Error::Conflict { seats, .. } = e {
        body["seats"] = json!(seats);
    }
    json!({ "error": body })
}
