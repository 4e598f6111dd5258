//! Metrics and logs of the `philotes` process: an OpenTelemetry meter provider exported in Prometheus text
//! format on `GET /metrics` (`telemetry.metrics`, default 127.0.0.1:9464) beside `GET /healthz`, served by
//! hyper's HTTP/1 server, and a poller that turns the pipeline's state (buffer depth, replication lag) into
//! gauges.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry_sdk::metrics::SdkMeterProvider;
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

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("metrics exporter: {0}")]
    Exporter(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr} for /metrics (telemetry.metrics): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the global meter provider and serves `/metrics` and `/healthz` on `addr` until `cancel` fires.
/// Returns once the address is bound; the server runs on a task of its own.
pub async fn serve_metrics(addr: SocketAddr, cancel: CancellationToken) -> Result<(), TelemetryError> {
    let registry = Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        // Our instrument names already end in their unit (`…_seconds`): no second suffix.
        .without_units()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    opentelemetry::global::set_meter_provider(SdkMeterProvider::builder().with_reader(exporter).build());
    let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
    tracing::info!(%addr, "serving metrics on /metrics, health on /healthz");
    tokio::spawn(serve(listener, registry, cancel));
    Ok(())
}

/// Accepts HTTP/1 connections on `listener` until `cancel` fires, then stops accepting and gives open
/// connections [`SHUTDOWN_GRACE`] to finish the request they are in (keep-alive connections are closed after it).
async fn serve(listener: TcpListener, registry: Registry, cancel: CancellationToken) {
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
        let registry = registry.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&request, &registry);
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
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut body = Vec::new();
            if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut body) {
                tracing::debug!(error = %e, "some metrics could not be encoded");
            }
            (StatusCode::OK, body)
        }
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, b"ok".to_vec()),
        (_, "/metrics" | "/healthz") => (StatusCode::METHOD_NOT_ALLOWED, b"use GET\n".to_vec()),
        _ => (StatusCode::NOT_FOUND, b"philotes serves /metrics and /healthz\n".to_vec()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// Every `every`, reads the pipeline's status and records buffer depth and replication lag as gauges.
pub async fn poll_status(config: PipelineConfig, every: Duration, cancel: CancellationToken) {
    let metrics = philotes_stages::telemetry::metrics();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let status = crate::status::read(&config).await;
        for problem in &status.errors {
            tracing::debug!(part = problem.part, error = %problem.error, "status poll could not read a part");
        }
        if let (Some(segments), Some(events), Some(bytes)) = (status.buffer_segments, status.buffer_events, status.buffer_bytes) {
            metrics.buffer_segments.record(segments, &[]);
            metrics.buffer_events.record(events, &[]);
            metrics.buffer_bytes.record(bytes, &[]);
        }
        if let Some(lag) = status.replication_lag_bytes {
            metrics.lag_bytes.record(lag, &[]);
        }
        if let Some(seconds) = status.checkpoint_age_seconds {
            metrics.lag_seconds.record(seconds, &[]);
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
        let server = tokio::spawn(serve(listener, registry, cancel.clone()));

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4\r\n"), "{metrics}");
        assert!(metrics.contains("\nphilotes_test_total 7\n"), "{metrics}");

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok"), "{health}");

        let missing = get(addr, "/metricsz").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops").expect("no panic");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens after the cancel");
    }
}
