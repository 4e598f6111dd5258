//! Metrics and logs of the `philotes` process: an OpenTelemetry meter provider exported in Prometheus text
//! format on `GET /metrics` (`telemetry.metrics`, default 127.0.0.1:9464), and a poller that turns the
//! pipeline's state (buffer depth, replication lag) into gauges.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;

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

/// Installs the global meter provider and serves `/metrics` on `addr` until `cancel` fires.
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
    tracing::info!(%addr, "serving metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut stream, _)) = accepted else { continue };
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]);
                let (status, body) = if line.starts_with("GET /metrics") {
                    let mut body = Vec::new();
                    let _ = TextEncoder::new().encode(&registry.gather(), &mut body);
                    ("200 OK", body)
                } else {
                    ("404 Not Found", b"philotes serves /metrics\n".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    Ok(())
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
