//! Metrics and logs of the `philotes` process: an OpenTelemetry meter provider exported in Prometheus text
//! format on `GET /metrics` (`telemetry.metrics`, default 127.0.0.1:9464) beside `GET /healthz`, served by
//! hyper's HTTP/1 server, and a poller that turns the pipeline's state (buffer depth, replication lag) into
//! gauges. Traces go out over OTLP only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set ([`trace_layer`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;

/// The content type of every response: Prometheus' text exposition format (plain text for the others too).
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";
/// How long open connections may finish their requests once the process stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The environment variables that turn traces on: the OTLP endpoint, for all signals or for traces only.
pub const OTLP_ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
/// The service name of the spans when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const SERVICE_NAME: &str = "philotes";

/// The tracer provider, once installed: flushed by [`shutdown_traces`] when the process ends.
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracing layer that exports philotes' spans over OTLP, or `None` (nothing installed, no cost) when no
/// OTLP endpoint is set, or `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn the SDK off. The SDK reads the rest of the standard environment itself: `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default: every trace),
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the one built in), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`.
/// Only philotes' own spans (info and up) and its warnings go out, not those of the libraries under it.
pub fn trace_layer<S>() -> Result<Option<impl tracing_subscriber::Layer<S>>, TelemetryError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer as _;
    let requested = OTLP_ENDPOINT_VARS.iter().any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    // The specification's switches off, which win over an endpoint (set in a shared environment, say).
    let set_to = |var: &str, value: &str| std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value));
    let disabled = set_to("OTEL_SDK_DISABLED", "true") || set_to("OTEL_TRACES_EXPORTER", "none");
    if !requested || disabled || TRACER_PROVIDER.get().is_some() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Traces(e.to_string()))?;
    // The environment's service name, else ours (the SDK's fallback is `unknown_service`).
    let mut resource = Resource::builder().build();
    let named = resource.get(&opentelemetry::Key::new("service.name"));
    if named.is_none_or(|name| name.as_str().starts_with("unknown_service")) {
        resource = Resource::builder().with_service_name(SERVICE_NAME).build();
    }
    let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
    let tracer: SdkTracer = provider.tracer("philotes");
    let _ = TRACER_PROVIDER.set(provider);
    philotes_stages::trace::enable();
    let ours = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("philotes")
            && if meta.is_span() { *meta.level() <= tracing::Level::INFO } else { *meta.level() <= tracing::Level::WARN }
    });
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours)))
}

/// Sends the spans still queued and stops the exporter (nothing when traces are off). Called once, as the
/// process ends, outside the async runtime (the exporter's HTTP client blocks).
pub fn shutdown_traces() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("philotes: the last spans could not be exported: {e}");
        }
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("metrics exporter: {0}")]
    Exporter(String),
    /// The OTLP span exporter could not be built (an unsupported `OTEL_EXPORTER_OTLP_PROTOCOL`, say).
    #[error("OTLP trace exporter: {0}")]
    Traces(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr} for /metrics (telemetry.metrics): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What `GET /readyz` answers: the verdict of the last status poll ([`poll_status`]), `None` before the first.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<Vec<String>>>>);

impl Readiness {
    /// Records why the pipeline is not ready (empty: it is).
    fn set(&self, reasons: Vec<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(reasons);
    }

    /// The status code and JSON body of `/readyz`.
    fn answer(&self) -> (StatusCode, Vec<u8>) {
        let reasons = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let reasons = reasons.unwrap_or_else(|| vec!["starting: the first status check has not run yet".to_string()]);
        let ready = reasons.is_empty();
        let body = serde_json::json!({ "ready": ready, "reasons": reasons });
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, format!("{body}\n").into_bytes())
    }
}

/// Why a pipeline in `status` is not ready to serve: a part that could not be read (source, buffer), a slot that
/// is missing or lost its WAL, a stopped table, a table whose flushes keep failing (catalog or warehouse).
/// A process without the capture role (`--role flusher`) needs neither the source nor the slot: their state
/// does not make it unready, so a source outage does not stall a rollout of flushers that could drain the buffer.
pub fn not_ready(status: &crate::status::Status, captures: bool) -> Vec<String> {
    let mut reasons: Vec<String> = status
        .errors
        .iter()
        .filter(|p| captures || p.part != "source")
        .map(|p| format!("{} unreachable: {}", p.part, p.error))
        .collect();
    if captures && status.slot_exists == Some(false) {
        reasons.push(format!("replication slot {} does not exist", status.slot));
    }
    if captures && status.slot_wal_status.as_deref() == Some("lost") {
        reasons.push(format!("replication slot {} is invalidated (its WAL is lost)", status.slot));
    }
    for table in &status.tables {
        if let Some(error) = &table.error {
            reasons.push(format!("table {} stopped: {error}", table.table));
        }
        if let Some(failing) = &table.failing {
            reasons.push(format!("table {} failing: {failing}", table.table));
        }
    }
    reasons
}

/// Installs the global meter provider (every metric labelled `pipeline`) and serves `/metrics` and `/healthz` on `addr` until `cancel` fires.
/// Returns once the address is bound; the server runs on a task of its own.
pub async fn serve_metrics(
    addr: SocketAddr,
    pipeline: &str,
    readiness: Readiness,
    cancel: CancellationToken,
) -> Result<(), TelemetryError> {
    // One process runs one pipeline: its name is a label of every metric, added by the registry.
    let labels = HashMap::from([(philotes_stages::telemetry::PIPELINE.to_string(), pipeline.to_string())]);
    let registry = Registry::new_custom(None, Some(labels)).map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        // Our instrument names already end in their unit (`…_seconds`): no second suffix.
        .without_units()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    opentelemetry::global::set_meter_provider(SdkMeterProvider::builder().with_reader(exporter).build());
    let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
    tracing::info!(%addr, "serving metrics on /metrics, health on /healthz and /readyz");
    tokio::spawn(serve(listener, registry, readiness, cancel));
    Ok(())
}

/// Accepts HTTP/1 connections on `listener` until `cancel` fires, then stops accepting and gives open
/// connections [`SHUTDOWN_GRACE`] to finish the request they are in (keep-alive connections are closed after it).
async fn serve(listener: TcpListener, registry: Registry, readiness: Readiness, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "the metrics endpoint could not accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (registry, readiness) = (registry.clone(), readiness.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&request, &registry, &readiness);
            async move { Ok::<_, Infallible>(response) }
        });
        // The timer bounds how long a client may take to send its request head (hyper's default: 30s).
        let connection = http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a metrics endpoint connection failed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("metrics endpoint connections still open after {SHUTDOWN_GRACE:?}; leaving them");
    }
}

/// The response to one request: the metrics, the health answer, or 404 (405 for another method on a known path).
fn respond(request: &Request<Incoming>, registry: &Registry, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut body = Vec::new();
            if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut body) {
                tracing::debug!(error = %e, "some metrics could not be encoded");
            }
            (StatusCode::OK, body)
        }
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, b"ok".to_vec()),
        (&Method::GET | &Method::HEAD, "/readyz") => readiness.answer(),
        (_, "/metrics" | "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, b"use GET\n".to_vec()),
        _ => (StatusCode::NOT_FOUND, b"philotes serves /metrics, /healthz and /readyz\n".to_vec()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let json = request.uri().path() == "/readyz" && status != StatusCode::METHOD_NOT_ALLOWED;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(if json { "application/json" } else { CONTENT_TYPE_TEXT }));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// Every `every` (the first time at once), reads the pipeline's status, records buffer depth and replication lag
/// as gauges and the readiness verdict for `/readyz`.
pub async fn poll_status(config: PipelineConfig, every: Duration, captures: bool, readiness: Readiness, cancel: CancellationToken) {
    let metrics = philotes_stages::telemetry::metrics();
    let mut first = true;
    // Warned once per excursion above the retained-WAL limit, not every poll.
    let mut over_limit = false;
    loop {
        if !first {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
        first = false;
        let status = crate::status::read(&config).await;
        readiness.set(not_ready(&status, captures));
        for problem in &status.errors {
            tracing::debug!(part = problem.part, error = %problem.error, "status poll could not read a part");
        }
        if let (Some(segments), Some(events), Some(bytes)) = (status.buffer_segments, status.buffer_events, status.buffer_bytes) {
            metrics.buffer_segments.record(segments, &[]);
            metrics.buffer_events.record(events, &[]);
            metrics.buffer_bytes.record(bytes, &[]);
            metrics.cdc_buffer_depth.record(events, &[]);
        }
        // True lag: the oldest change not in Iceberg is either waiting in the buffer or still held by this
        // process's capture; with neither, everything is in and the lag is 0, however long the source is idle.
        // An unreadable buffer leaves the gauge as it was rather than claiming 0.
        if status.buffer_segments.is_some() {
            let lag = [status.buffer_lag_seconds, philotes_stages::telemetry::capture_lag_seconds()]
                .into_iter()
                .flatten()
                .fold(0.0, f64::max);
            metrics.cdc_lag_seconds.record(lag, &[]);
        }
        if let Some(lag) = status.replication_lag_bytes {
            metrics.lag_bytes.record(lag, &[]);
        }
        if let Some(kept) = status.slot_retained_wal_bytes {
            metrics.retained_wal_bytes.record(kept, &[]);
            match status.slot_retained_wal_limit_bytes {
                Some(limit) if kept > limit => {
                    if !over_limit {
                        tracing::warn!(slot = %status.slot, retained_bytes = kept, limit_bytes = limit,
                            "the replication slot keeps more WAL on the source than source.postgres.max_retained_wal \
                             (or 80% of max_slot_wal_keep_size): is the capture running and keeping up? Past \
                             max_slot_wal_keep_size the server invalidates the slot");
                    }
                    over_limit = true;
                }
                _ => over_limit = false,
            }
        }
        if let Some(seconds) = status.checkpoint_age_seconds {
            metrics.lag_seconds.record(seconds, &[]);
        }
        for table in &status.tables {
            let stopped = table.error.is_some() || table.problem.is_some();
            metrics.table_stopped.record(i64::from(stopped), &[KeyValue::new(philotes_stages::telemetry::TABLE, table.table.clone())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One `GET path` over a fresh connection (closed by the request), the whole response as text.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("reads");
        String::from_utf8(response).expect("text")
    }

    #[tokio::test]
    async fn metrics_and_health_are_served_other_paths_are_not_found_and_cancel_stops_the_server() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("philotes_test_total", "A counter for this test.").expect("counter");
        registry.register(Box::new(counter.clone())).expect("registers");
        counter.inc_by(7);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let cancel = CancellationToken::new();
        let readiness = Readiness::default();
        let server = tokio::spawn(serve(listener, registry, readiness.clone(), cancel.clone()));

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4\r\n"), "{metrics}");
        assert!(metrics.contains("\nphilotes_test_total 7\n"), "{metrics}");

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok"), "{health}");

        // Not ready before the first status check, then whatever it found, with the reasons.
        let starting = get(addr, "/readyz").await;
        assert!(starting.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && starting.contains("starting"), "{starting}");
        readiness.set(vec!["table public.t stopped: a reason".into()]);
        let stopped = get(addr, "/readyz").await;
        assert!(stopped.contains(r#"{"ready":false,"reasons":["table public.t stopped: a reason"]}"#), "{stopped}");
        readiness.set(Vec::new());
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n") && ready.contains(r#"{"ready":true,"reasons":[]}"#), "{ready}");

        let missing = get(addr, "/metricsz").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops").expect("no panic");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens after the cancel");
    }
}
