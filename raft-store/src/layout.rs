//! Venue layouts: the JSON file format, its validation, and a generator.
//!
//! A layout is data, given when an event is created:
//!
//! ```json
//! { "venue": "Riverside Hall",
//!   "sections": [
//!     { "id": "Stalls",  "rows": [ { "id": "A", "seats": 12 },
//!                                  { "id": "B", "seats": 14, "first": 3 } ] },
//!     { "id": "Balcony", "rows": [ { "id": "BA", "seat_ids": ["BA-1", "BA-2", "BA-5"] } ] } ] }
//! ```
//!
//! A row either numbers its seats (`seats`: how many, `first`: the first number,
//! default 1; the seat ids are `{row}-{n}`) or names them (`seat_ids`). Seat ids must be
//! unique across the whole event, so numbered rows need ids unique across sections.
//!
//! Invariant: a [`SeatPlan`] only exists for a layout that passed every check (ids
//! bounded and printable, no duplicates, 1..=`SEATS_PER_EVENT_MAX` seats, at most
//! `SECTIONS_PER_EVENT_MAX` sections); seats are numbered 0..n in file order, and that
//! order is the order of every seat map (so a section's seats are contiguous).

use std::collections::HashSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::limits::{Exceeded, Limit, SEATS_PER_EVENT_MAX, SEAT_ID_BYTES_MAX, TEXT_BYTES_MAX};

/// A venue layout as written in a layout file (and carried in a CreateEvent entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VenueLayout {
    pub venue: String,
    pub sections: Vec<SectionLayout>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionLayout {
    pub id: String,
    pub rows: Vec<RowLayout>,
}

/// One row. Exactly one of `seats` (a count) and `seat_ids` (explicit names) is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowLayout {
    pub id: String,
    #[serde(default)]
    pub seats: Option<u32>,
    #[serde(default)]
    pub first: Option<u32>,
    #[serde(default)]
    pub seat_ids: Option<Vec<String>>,
}

impl RowLayout {
    fn is_well_formed(&self) -> bool {
        match (self.seats, &self.seat_ids, self.first) {
            (Some(n), None, _) => n > 0,
            (None, Some(ids), None) => !ids.is_empty(),
            _ => false,
        }
    }
}

/// A validated layout flattened into seat order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeatPlan {
    /// `(section index, row id)` for every row, in file order.
    pub rows: Vec<(u32, Box<str>)>,
    /// `(seat id, row index)` for every seat, in file order.
    pub seats: Vec<(Arc<str>, u32)>,
    /// Seat count per section.
    pub section_capacity: Vec<u32>,
    /// Numbered rows by row id, so `A-10` resolves by arithmetic: a small map that
    /// stays in cache even for a stadium, instead of one entry per seat.
    numbered_rows: FxHashMap<Box<str>, NumberedRow>,
    /// Seats of rows that name their seats (the ids shared with `seats`).
    named_seats: FxHashMap<Arc<str>, u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NumberedRow {
    /// Index of the row's first seat.
    start: u32,
    /// The number of the row's first seat.
    first: u32,
    count: u32,
}

impl SeatPlan {
    /// The index of the seat with this id, if the event has it.
    pub fn seat_index(&self, id: &str) -> Option<u32> {
        self.numbered_index(id)
            .or_else(|| self.named_seats.get(id).copied())
    }

    /// The index of the numbered seat with this id, if a numbered row has it.
    fn numbered_index(&self, id: &str) -> Option<u32> {
        let (row, digits) = id.rsplit_once('-')?;
        // Only the canonical spelling `{row}-{n}` (no sign, no leading zero) names a
        // numbered seat; anything else can only be a named seat.
        let canonical = !digits.is_empty()
            && digits.len() <= 10
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        let r = self.numbered_rows.get(row)?;
        let n = digits.parse::<u32>().ok()?;
        (n >= r.first && n - r.first < r.count).then(|| r.start + (n - r.first))
    }
}

fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} {s:?} must be 1..={max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} {s:?} contains control characters"));
    }
    Ok(())
}

fn check_id(what: &str, s: &str) -> Result<(), String> {
    check_name(what, s, SEAT_ID_BYTES_MAX)?;
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} {s:?} must be printable ASCII without spaces"
        ));
    }
    Ok(())
}

impl VenueLayout {
    /// Parses a layout file. The result still needs [`VenueLayout::plan`].
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("layout is not valid JSON: {e}"))
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Total seat count, without building the plan. Saturates on absurd input.
    pub fn capacity(&self) -> u64 {
        let row_len = |r: &RowLayout| match (&r.seats, &r.seat_ids) {
            (Some(n), None) => u64::from(*n),
            (None, Some(ids)) => ids.len() as u64,
            _ => 0,
        };
        self.sections
            .iter()
            .flat_map(|s| s.rows.iter())
            .fold(0u64, |acc, r| acc.saturating_add(row_len(r)))
    }

    /// Checks the layout against the absolute caps: the venue name's length, the
    /// number of sections and of seats, the length of every section, row and named
    /// seat id. Builds nothing: the seat count first (linear in the rows), so a layout
    /// of millions of named seats is refused before they are looked at.
    pub fn check_limits(&self) -> Result<(), Exceeded> {
        Limit::TextBytes.check(self.venue.len())?;
        Limit::SectionsPerEvent.check(self.sections.len())?;
        Limit::SeatsPerEvent.check(usize::try_from(self.capacity()).unwrap_or(usize::MAX))?;
        for section in &self.sections {
            Limit::SeatIdBytes.check(section.id.len())?;
            for row in &section.rows {
                Limit::SeatIdBytes.check(row.id.len())?;
                for id in row.seat_ids.iter().flatten() {
                    Limit::SeatIdBytes.check(id.len())?;
                }
            }
        }
        Ok(())
    }

    /// Validates the layout and flattens it into seat order.
    ///
    /// Runs inside `apply` when an event is created (and when a stored event is
    /// loaded), so its cost is per seat and small: a numbered seat costs its id's one
    /// allocation and nothing else. Duplicates are found without a set of every seat
    /// id: numbered rows are unique by row id and `{row}-{n}` names one row and number,
    /// so numbered seats cannot collide with each other; named seats are checked
    /// against each other (the named-seat map) and against the numbered rows.
    pub fn plan(&self) -> Result<SeatPlan, String> {
        self.check_limits().map_err(|e| e.to_string())?;
        check_name("venue name", &self.venue, TEXT_BYTES_MAX)?;
        if self.sections.is_empty() {
            return Err("layout has no sections".into());
        }
        for s in &self.sections {
            if s.rows.is_empty() {
                return Err(format!("section {:?} has no rows", s.id));
            }
            if let Some(r) = s.rows.iter().find(|r| !r.is_well_formed()) {
                return Err(format!(
                    "row {:?} needs either a positive `seats` count (optionally with \
                     `first`) or a non-empty `seat_ids` list",
                    r.id
                ));
            }
        }
        let capacity = self.capacity();
        if capacity == 0 || capacity > SEATS_PER_EVENT_MAX as u64 {
            return Err(format!(
                "layout must have 1..={SEATS_PER_EVENT_MAX} seats, has {capacity}"
            ));
        }
        let rows = self.sections.iter().map(|s| s.rows.len()).sum();
        let named = self
            .sections
            .iter()
            .flat_map(|s| s.rows.iter())
            .map(|r| r.seat_ids.as_ref().map_or(0, Vec::len))
            .sum();
        // Sized once: growing a map of 200,000 seats rehashes every one of them.
        let mut plan = SeatPlan {
            rows: Vec::with_capacity(rows),
            seats: Vec::with_capacity(capacity as usize),
            section_capacity: Vec::with_capacity(self.sections.len()),
            numbered_rows: FxHashMap::with_capacity_and_hasher(rows, Default::default()),
            named_seats: FxHashMap::with_capacity_and_hasher(named, Default::default()),
        };
        let mut section_ids = HashSet::new();
        let mut id = String::with_capacity(SEAT_ID_BYTES_MAX);
        for (s_idx, section) in self.sections.iter().enumerate() {
            check_id("section id", &section.id)?;
            if !section_ids.insert(section.id.as_str()) {
                return Err(format!("duplicate section id {:?}", section.id));
            }
            let before = plan.seats.len();
            for row in &section.rows {
                check_id("row id", &row.id)?;
                let row_idx = plan.rows.len() as u32;
                plan.rows.push((s_idx as u32, row.id.as_str().into()));
                match (row.seats, &row.seat_ids, row.first) {
                    (Some(n), None, first) if n > 0 => {
                        let first = first.unwrap_or(1);
                        let last = first.checked_add(n - 1).ok_or("seat numbers overflow")?;
                        // The row id is printable ASCII and so are digits: only the
                        // length can be wrong, and the last number is the longest.
                        id.clear();
                        id.push_str(&row.id);
                        id.push('-');
                        let prefix = id.len();
                        push_decimal(&mut id, last);
                        check_id("seat id", &id)?;
                        let numbered = NumberedRow {
                            start: plan.seats.len() as u32,
                            first,
                            count: n,
                        };
                        if let Some(prev) =
                            plan.numbered_rows.insert(row.id.as_str().into(), numbered)
                        {
                            // Overlapping numbers name the same seats.
                            let prev_last = prev.first + (prev.count - 1);
                            let shared = first.max(prev.first);
                            if shared <= last.min(prev_last) {
                                return Err(format!("duplicate seat id \"{}-{shared}\"", row.id));
                            }
                            return Err(format!("numbered row id {:?} used twice", row.id));
                        }
                        for num in first..=last {
                            id.truncate(prefix);
                            push_decimal(&mut id, num);
                            plan.seats.push((Arc::from(id.as_str()), row_idx));
                        }
                    }
                    (None, Some(ids), None) if !ids.is_empty() => {
                        for name in ids {
                            check_id("seat id", name)?;
                            let name: Arc<str> = name.as_str().into();
                            let idx = plan.seats.len() as u32;
                            if plan.named_seats.insert(name.clone(), idx).is_some() {
                                return Err(format!("duplicate seat id {name:?}"));
                            }
                            plan.seats.push((name, row_idx));
                        }
                    }
                    _ => unreachable!("rows were checked to be well formed"),
                }
            }
            plan.section_capacity
                .push((plan.seats.len() - before) as u32);
        }
        // Named seats against numbered rows, in file order (so the error names the
        // same seat on every replica); numbered rows all exist by now.
        let named = self
            .sections
            .iter()
            .flat_map(|s| s.rows.iter())
            .flat_map(|r| r.seat_ids.iter().flatten());
        for name in named {
            if plan.numbered_index(name).is_some() {
                return Err(format!("duplicate seat id {name:?}"));
            }
        }
        debug_assert_eq!(plan.seats.len() as u64, capacity);
        Ok(plan)
    }
}

/// Appends `n` in decimal: what `{n}` formats, without the formatting machinery
/// (it is done once per numbered seat when an event is created).
fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(d as char);
    }
}

/// Row labels in spreadsheet order: A..Z, AA..AZ, BA.. so that any number of rows
/// gets short unique ids.
pub fn row_label(mut n: usize) -> String {
    let mut label = Vec::new();
    loop {
        label.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    label.reverse();
    String::from_utf8(label).unwrap_or_default()
}

/// A rectangular venue: `sections` sections of `rows_per_section` rows of
/// `seats_per_row` seats. Rows are labelled across the whole venue (section 2 continues
/// where section 1 stopped), so seat ids such as `A-10` stay unique.
pub fn generate(
    venue: &str,
    sections: u32,
    rows_per_section: u32,
    seats_per_row: u32,
) -> VenueLayout {
    let mut next_row = 0usize;
    let sections = (1..=sections)
        .map(|s| SectionLayout {
            id: format!("S{s}"),
            rows: (0..rows_per_section)
                .map(|_| {
                    next_row += 1;
                    RowLayout {
                        id: row_label(next_row - 1),
                        seats: Some(seats_per_row),
                        first: None,
                        seat_ids: None,
                    }
                })
                .collect(),
        })
        .collect();
    VenueLayout {
        venue: venue.to_string(),
        sections,
    }
}

/// Named layouts for demos and benchmarks.
pub fn preset(name: &str) -> Option<VenueLayout> {
    match name {
        "small" => Some(generate("Small Hall", 2, 5, 10)),
        "arena" => Some(generate("Arena", 20, 20, 50)),
        "stadium" => Some(generate("Stadium", 40, 50, 50)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_layout_is_valid() {
        let layout = VenueLayout::from_json(include_str!("../layouts/small-hall.json")).unwrap();
        let plan = layout.plan().unwrap();
        assert_eq!(plan.seats.len() as u64, layout.capacity());
        assert!(plan.seats.iter().any(|(id, _)| &**id == "A-10"));
    }

    #[test]
    fn seat_ids_resolve_to_their_index_and_nothing_else_does() {
        let layout = VenueLayout::from_json(include_str!("../layouts/small-hall.json")).unwrap();
        let plan = layout.plan().unwrap();
        for (i, (id, _)) in plan.seats.iter().enumerate() {
            assert_eq!(plan.seat_index(id), Some(i as u32), "{id}");
        }
        for bad in [
            "A-0", "A-13", "A-01", "A-+1", "A-", "-1", "A", "BA-100", "BA-108x", "BB-4", "Z-1", "",
        ] {
            assert_eq!(plan.seat_index(bad), None, "{bad:?}");
        }
        assert_eq!(plan.seat_index("BA-101"), Some(52));
        assert_eq!(plan.seat_index("BB-5"), Some(63));
    }

    #[test]
    fn presets_have_the_advertised_sizes() {
        for (name, seats) in [("small", 100), ("arena", 20_000), ("stadium", 100_000)] {
            let plan = preset(name).unwrap().plan().unwrap();
            assert_eq!(plan.seats.len(), seats, "{name}");
        }
        assert_eq!(row_label(0), "A");
        assert_eq!(row_label(25), "Z");
        assert_eq!(row_label(26), "AA");
        assert_eq!(row_label(27 * 26), "AAA");
    }

    #[test]
    fn bad_layouts_are_refused_with_a_reason() {
        let cases = [
            (r#"{"venue":"V","sections":[]}"#, "no sections"),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[]}]}"#,
                "no rows",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A"}]}]}"#,
                "needs either",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seats":2},{"id":"A","seats":1}]}]}"#,
                "duplicate seat id",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seat_ids":["x y"]}]}]}"#,
                "printable",
            ),
            // A named seat that a numbered row also has, whichever comes first.
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"N","seat_ids":["A-2"]},{"id":"A","seats":3}]}]}"#,
                "duplicate seat id \"A-2\"",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seats":3,"first":0},{"id":"N","seat_ids":["A-0"]}]}]}"#,
                "duplicate seat id \"A-0\"",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"N","seat_ids":["x","y"]},{"id":"M","seat_ids":["y"]}]}]}"#,
                "duplicate seat id \"y\"",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"ABCDEFGHIJKLMNOPQRSTUVWXYZ-1234","seats":10}]}]}"#,
                "must be 1..=32 bytes",
            ),
            (
                r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seats":1000001}]}]}"#,
                "SEATS_PER_EVENT_MAX",
            ),
        ];
        for (json, want) in cases {
            let err = VenueLayout::from_json(json)
                .and_then(|l| l.plan())
                .unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        // Not duplicates: a named id that only looks numbered, or is outside the row.
        let json = r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seats":3},{"id":"N","seat_ids":["A-02","A-4","A-0","A--1"]}]}]}"#;
        let plan = VenueLayout::from_json(json).unwrap().plan().unwrap();
        assert_eq!(plan.seat_index("A-02"), Some(3));
        assert_eq!(plan.seat_index("A-2"), Some(1));
        assert_eq!(plan.seat_index("A--1"), Some(6));
        assert!(VenueLayout::from_json(r#"{"venue":"V","sections":[],"x":1}"#).is_err());
        assert!(VenueLayout::from_json("{").is_err());
    }
}
