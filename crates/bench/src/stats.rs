//! Latency histograms (HdrHistogram) and adding up what workers report.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::spec::{ResumeTally, RoomTally, WorkerReport};

/// Largest recordable value: 10 minutes in microseconds.
const MAX_US: u64 = 600_000_000;

/// A histogram of microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("histogram bounds")
}

/// Records `us`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// The histogram as (value, count) pairs, for a JSON line.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs into `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = h.record_n(value.clamp(1, MAX_US), count);
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The reports of all workers for one round, added up.
#[derive(Debug, Default)]
pub struct Totals {
    pub rooms: BTreeMap<u32, RoomTally>,
    pub published: BTreeMap<u32, u64>,
    pub publishers_dead: u64,
    pub latency: Option<Histogram<u64>>,
    pub delivered_in_window: u64,
    pub server_errors: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub resume: ResumeTally,
    pub back_after: Option<Histogram<u64>>,
    pub client_rss_kib: u64,
}

/// Loss accounting: what should have arrived and what did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Delivery {
    pub published: u64,
    /// Σ over rooms of (members connected at the end × messages published to the room).
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Messages received after a later one from the same publisher.
    pub reordered: u64,
    /// roomcast offsets skipped or repeated, as each member saw them.
    pub offset_gaps: u64,
    pub offset_duplicates: u64,
    /// Members that left for good during the run.
    pub members_dead: u64,
}

impl Totals {
    pub fn add(&mut self, report: &WorkerReport) {
        for r in &report.rooms {
            let t = self.rooms.entry(r.room).or_insert_with(|| RoomTally {
                room: r.room,
                ..RoomTally::default()
            });
            t.members += r.members;
            t.dead += r.dead;
            t.received += r.received;
            t.duplicates += r.duplicates;
            t.gaps += r.gaps;
            t.reordered += r.reordered;
            t.offset_gaps += r.offset_gaps;
            t.offset_duplicates += r.offset_duplicates;
        }
        for &(room, n) in &report.published {
            *self.published.entry(room).or_default() += n;
        }
        self.publishers_dead += report.publishers_dead;
        add_pairs(
            self.latency.get_or_insert_with(histogram),
            &report.latency_us,
        );
        self.delivered_in_window += report.delivered_in_window;
        for (k, n) in &report.server_errors {
            *self.server_errors.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &report.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        let r = &report.resume;
        let t = &mut self.resume;
        t.went_down += r.went_down;
        t.came_back += r.came_back;
        t.sessions_resumed += r.sessions_resumed;
        t.fresh_sessions += r.fresh_sessions;
        t.rooms_recovered += r.rooms_recovered;
        t.rooms_not_recovered += r.rooms_not_recovered;
        t.failed_attempts += r.failed_attempts;
        add_pairs(
            self.back_after.get_or_insert_with(histogram),
            &r.back_after_us,
        );
        self.client_rss_kib += report.rss_kib;
    }

    pub fn latency(&self) -> Latency {
        self.latency.as_ref().map(Latency::of).unwrap_or_default()
    }

    pub fn delivery(&self) -> Delivery {
        let mut d = Delivery::default();
        for (room, t) in &self.rooms {
            let published = self.published.get(room).copied().unwrap_or(0);
            let expected = t.members * published;
            d.expected += expected;
            d.received += t.received;
            d.lost += expected.saturating_sub(t.received);
            d.duplicates += t.duplicates;
            d.reordered += t.reordered;
            d.offset_gaps += t.offset_gaps;
            d.offset_duplicates += t.offset_duplicates;
            d.members_dead += t.dead;
        }
        d.published = self.published.values().sum();
        d
    }

    /// The most frequent client errors, for a report line.
    pub fn top_errors(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.errors.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_as_pairs() {
        let mut h = histogram();
        for us in [150, 900, 1200, 5000, 5000, 80_000] {
            record(&mut h, us);
        }
        let mut back = histogram();
        add_pairs(&mut back, &to_pairs(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn loss_is_counted_per_room() {
        let mut t = Totals::default();
        t.add(&WorkerReport {
            rooms: vec![
                RoomTally {
                    room: 0,
                    members: 3,
                    received: 29,
                    ..RoomTally::default()
                },
                RoomTally {
                    room: 1,
                    members: 2,
                    received: 10,
                    duplicates: 1,
                    ..RoomTally::default()
                },
            ],
            published: vec![(0, 10), (1, 5)],
            ..WorkerReport::default()
        });
        let d = t.delivery();
        assert_eq!(d.published, 15);
        assert_eq!(d.expected, 40);
        assert_eq!(d.received, 39);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicates, 1);
    }
}
