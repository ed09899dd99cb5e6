//! Metric handles and their exposition, on `prometheus-client` (the
//! Prometheus project's own crate), for every roomcast process.
//!
//! [`Counter`], [`Gauge`] and [`Histogram`] wrap the crate's types (an `Arc`
//! around an atomic, or a mutex for the histogram) and keep the small API the
//! rest of the code calls: `inc`, `add`, `dec`, `set`, `get`, `observe_us`,
//! none of which returns a value. Clones share the value, so a process
//! registers one clone and keeps the other on its hot path: recording is one
//! relaxed atomic operation, never a lookup.
//!
//! The text served is the classic Prometheus format (version 0.0.4, see
//! [`CONTENT_TYPE`]), written by [`encode`]. Names are registered the way
//! `prometheus-client` wants them: a counter without its `_total` (the
//! encoder adds it) and help text without its final period (the registry
//! adds one).

use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{self, ConstCounter};
pub use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{self, ConstGauge};
use prometheus_client::metrics::histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The label set of a labelled family: `[(name, value), …]`.
pub type Labels = Vec<(&'static str, String)>;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(counter::Counter);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.inc();
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(gauge::Gauge);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.inc();
    }

    #[inline]
    pub fn dec(&self) {
        self.0.dec();
    }

    #[inline]
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }

    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// Observations counted in fixed buckets (upper bounds in seconds).
#[derive(Clone, Debug)]
pub struct Histogram(histogram::Histogram);

impl Histogram {
    pub fn new(buckets: &[f64]) -> Histogram {
        Histogram(histogram::Histogram::new(buckets.iter().copied()))
    }

    /// Records a duration given in microseconds.
    #[inline]
    pub fn observe_us(&self, us: u64) {
        self.0.observe(us as f64 / 1e6);
    }
}

/// Each wrapper encodes as the `prometheus-client` type it wraps.
macro_rules! encode_as_inner {
    ($($t:ty => $kind:ident),*) => {$(
        impl TypedMetric for $t {
            const TYPE: MetricType = MetricType::$kind;
        }

        impl EncodeMetric for $t {
            fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
                self.0.encode(encoder)
            }

            fn metric_type(&self) -> MetricType {
                Self::TYPE
            }
        }
    )*};
}
encode_as_inner!(Counter => Counter, Gauge => Gauge, Histogram => Histogram);

/// A counter registered in `registry` as `name` (exposed as `name_total`).
pub fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

/// A gauge registered in `registry` as `name`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

/// Registers a family of one label and returns its children, one per value
/// in `values`' order, created now so that every series is exposed from the
/// start and recording never looks a child up.
pub fn labelled<M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: Family<Labels, M, fn() -> M>,
    label: &'static str,
    values: [&str; N],
) -> [M; N]
where
    M: EncodeMetric + TypedMetric + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let children = values.map(|v| family.get_or_create_owned(&vec![(label, v.to_string())]));
    registry.register(name, help, family);
    children
}

/// Values read at scrape time (state sizes, other components' counters),
/// registered as constants in a registry built for one scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    registry: Registry,
    /// `(name, help, sum, count)`: `prometheus-client` has no summary type.
    summaries: Vec<(&'static str, &'static str, f64, u64)>,
}

impl Snapshot {
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: i64) {
        self.registry.register(name, help, ConstGauge::new(v));
    }

    pub fn gauge_f64(&mut self, name: &str, help: &str, v: f64) {
        self.registry.register(name, help, ConstGauge::new(v));
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.registry.register(name, help, ConstCounter::new(v));
    }

    /// A counter family of one label, one series per `(value, count)`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        series: &[(&str, u64)],
    ) {
        let family = Family::<Labels, Counter>::default();
        for (value, n) in series {
            family
                .get_or_create(&vec![(label, value.to_string())])
                .add(*n);
        }
        self.registry.register(name, help, family);
    }

    /// A summary without quantiles (its `_sum` and `_count`). Help is
    /// written as given, period included.
    pub fn summary(&mut self, name: &'static str, help: &'static str, sum: f64, count: u64) {
        self.summaries.push((name, help, sum, count));
    }

    /// Appends the snapshot's families to `out`.
    pub fn encode(&self, out: &mut String) {
        encode(out, &self.registry);
        for (name, help, sum, count) in &self.summaries {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} summary\n{name}_sum {sum}\n{name}_count {count}"
            );
        }
    }
}

/// Appends `registry`'s families to `out` in the Prometheus text format.
pub fn encode(out: &mut String, registry: &Registry) {
    // Writing to a `String` cannot fail, nor can our metrics' encoders.
    let _ = prometheus_text::encode(out, registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_help_and_labels_come_out_as_registered() {
        let mut registry = Registry::default();
        let c = Counter::default();
        registry.register("x_events", "Events seen", c.clone());
        let [a, b] = labelled(
            &mut registry,
            "x_refused",
            "Refused, by reason",
            Family::<Labels, Counter>::default(),
            "reason",
            ["a", "b"],
        );
        c.add(3);
        a.inc();
        let h = Histogram::new(&[0.001, 1.0]);
        registry.register("x_seconds", "Latency", h.clone());
        h.observe_us(500);
        let mut snapshot = Snapshot::default();
        snapshot.gauge("x_open", "Open now", 2);
        snapshot.counters("x_pings", "Pings, by path", "path", &[("direct", 4)]);
        snapshot.summary("x_repair_seconds", "Repairs.", 1.5, 2);
        let mut text = String::new();
        encode(&mut text, &registry);
        snapshot.encode(&mut text);
        drop(b);
        for line in [
            "# HELP x_events_total Events seen.",
            "# TYPE x_events_total counter",
            "x_events_total 3",
            "# TYPE x_refused_total counter",
            "x_refused_total{reason=\"a\"} 1",
            "x_refused_total{reason=\"b\"} 0",
            "x_seconds_bucket{le=\"0.001\"} 1",
            "x_seconds_bucket{le=\"1\"} 1",
            "x_seconds_bucket{le=\"+Inf\"} 1",
            "x_seconds_count 1",
            "# TYPE x_open gauge",
            "x_open 2",
            "x_pings_total{path=\"direct\"} 4",
            "# TYPE x_repair_seconds summary",
            "x_repair_seconds_sum 1.5",
            "x_repair_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
