//! Logs and traces.
//!
//! Logs go to stdout (text or JSON). Traces, when enabled, are exported with
//! OpenTelemetry over OTLP (gRPC, or HTTP/protobuf), sampled by a ratio, and
//! follow a message across nodes: the publishing span's W3C `traceparent`
//! travels in the envelope through Redis, and each receiving node's delivery
//! span takes it as parent, so a publish on node A and its delivery on node B
//! are one trace.
//!
//! With tracing off nothing is paid on the hot path: the node creates no
//! span at all ([`enabled`] is one relaxed atomic load) and messages carry no
//! trace context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{Config, ConfigError};

static ENABLED: AtomicBool = AtomicBool::new(false);

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
/// Swaps the log filter of the installed subscriber (set by [`init`]).
static LOG_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// Changes the log filter (`log.level`) of the running process.
pub fn set_log_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?;
    match LOG_FILTER.get() {
        Some(set) => set(filter),
        None => Ok(()),
    }
}

/// True when spans are exported: only then does the node create them.
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Flushes pending spans when dropped (at exit).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Where and how spans are exported, after config and `OTEL_*` variables.
struct Export {
    endpoint: String,
    http: bool,
    service: String,
}

fn export_settings(config: &Config, default_service: &str) -> Option<Export> {
    let t = &config.tracing;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = Some(t.endpoint.clone())
        .filter(|e| !e.is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if !t.enabled && endpoint.is_none() {
        return None;
    }
    let protocol = Some(t.protocol.clone())
        .filter(|p| !p.is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".into());
    let http = protocol.starts_with("http");
    let mut endpoint = endpoint.unwrap_or_else(|| {
        if http {
            "http://127.0.0.1:4318".into()
        } else {
            "http://127.0.0.1:4317".into()
        }
    });
    if http && !endpoint.ends_with("/v1/traces") {
        endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    }
    let service = Some(t.service_name.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| default_service.to_string());
    Some(Export {
        endpoint,
        http,
        service,
    })
}

/// Sets up logging and, when configured, trace export. Must run inside a
/// tokio runtime (the gRPC exporter needs one).
pub fn init(config: &Config, default_service: &str) -> Result<Telemetry, ConfigError> {
    let filter = EnvFilter::try_new(&config.log.level)
        .map_err(|e| ConfigError(format!("log.level: {e}")))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(Box::new(move |f| {
        handle.reload(f).map_err(|e| format!("log.level: {e}"))
    }));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = if config.log.json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(ansi).boxed()
    };
    let Some(export) = export_settings(config, default_service) else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init()
            .map_err(|e| ConfigError(format!("log: {e}")))?;
        return Ok(Telemetry { provider: None });
    };
    let exporter = if export.http {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&export.endpoint)
            .build()
    } else {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .build()
    }
    .map_err(|e| ConfigError(format!("tracing.endpoint: {e}")))?;
    let ratio = config.tracing.sample_ratio.clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(export.service.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("roomcast");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|e| ConfigError(format!("log: {e}")))?;
    ENABLED.store(true, Relaxed);
    tracing::info!(
        endpoint = %export.endpoint,
        service = %export.service,
        ratio,
        "exporting traces over OTLP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The W3C `traceparent` of the current span, if it is sampled.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
