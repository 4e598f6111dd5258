//! Traces from WAL to snapshot: the real binary exports its spans over OTLP/HTTP to a receiver inside the test,
//! the segment row carries the capture span's `traceparent`, and the flush span (in another process) links to
//! it. Without an OTLP endpoint nothing is traced and segments carry no context.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use philotes_stages::store::segments;
use prost::Message;
use tokio::net::TcpListener;

use crate::flush::{create_table, read_with_iceberg_crate, Pipeline, SCHEMA};
use crate::support::{connect, wait_durable};

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP receiver (protobuf, `POST /v1/traces`) on the loopback, keeping every span it is sent.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (kept, counted) = (spans.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, counted) = (kept.clone(), counted.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (kept, counted) = (kept.clone(), counted.clone());
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces", "the OTLP/HTTP traces path");
                        let body = request.into_body().collect().await.expect("body").to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
                        *counted.lock().expect("lock") += 1;
                        let mut kept = kept.lock().expect("lock");
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .as_ref()
                                .and_then(|r| text(&r.attributes, "service.name"))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                kept.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Self { endpoint, spans, requests }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }
}

/// An attribute's value, as text.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    match value {
        AnyValue { value: Some(any_value::Value::StringValue(s)) } => Some(s.clone()),
        AnyValue { value: Some(any_value::Value::IntValue(i)) } => Some(i.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `OTEL_*` settings of a process that traces to `receiver`, every trace sampled, spans sent every 100 ms.
fn traced<'a>(receiver: &'a Receiver, sampler: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "philotes-traces-test"),
        ("OTEL_TRACES_SAMPLER", sampler),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

/// The trace context stored on each of the pipeline's segments.
async fn trace_contexts(client: &tokio_postgres::Client, pipeline: &str) -> Vec<Option<String>> {
    segments::all(client, pipeline).await.expect("segments").into_iter().map(|s| s.row.trace_context).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_span_links_across_the_buffer_to_the_capture_span_of_the_segment_it_commits() {
    let db = philotes_testkit::shared().database("traces").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ max_events: 1000, interval: 200ms }");
    let client = connect(&db).await;
    let receiver = Receiver::start().await;
    let env = traced(&receiver, "always_on");

    // The capture alone first: the segment's row is read before any flusher takes it.
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &env, "capture.log").await;
    db.psql("INSERT INTO orders (id, name, amount) VALUES (1, 'ada', 12.50)").expect("insert");
    wait_durable(&client, &pipeline.name, 1, &capture).await;
    let contexts = trace_contexts(&client, &pipeline.name).await;
    let [Some(traceparent)] = contexts.as_slice() else { panic!("one segment with a trace context: {contexts:?}") };
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else { panic!("a W3C traceparent: {traceparent}") };
    assert_eq!((*version, *flags), ("00", "01"), "version 00, sampled: {traceparent}");

    // A flusher in its own process commits the segment.
    let flusher = pipeline.start(&["--role", "flusher"], &env, "flusher.log");
    flusher
        .wait_until("the change to be flushed and checkpointed", Duration::from_secs(60), || async {
            trace_contexts(&client, &pipeline.name).await.is_empty()
        })
        .await;
    assert_eq!(read_with_iceberg_crate(&pipeline, "orders").await.len(), 1, "the row is in iceberg");
    // A clean stop sends the spans still queued.
    flusher.stop_cleanly().await;
    capture.stop_cleanly().await;

    let spans = receiver.spans();
    assert!(spans.iter().all(|s| s.service == "philotes-traces-test"), "OTEL_SERVICE_NAME names the service");
    let find = |id: &[u8]| spans.iter().find(|s| s.span.span_id == id);

    // The capture span the row names arrived: a `segment` span, child of the engine's span of the Enqueue batch.
    let segment = spans
        .iter()
        .find(|s| hex(&s.span.trace_id) == *trace_id && hex(&s.span.span_id) == *span_id)
        .unwrap_or_else(|| panic!("the capture span {traceparent} was exported; got {} spans", spans.len()));
    assert_eq!(segment.span.name, "segment");
    assert_eq!(text(&segment.span.attributes, "table").as_deref(), Some("public.orders"));
    assert_eq!(text(&segment.span.attributes, "events").as_deref(), Some("1"));
    let batch = find(&segment.span.parent_span_id).expect("the segment span's parent was exported");
    assert_eq!(batch.span.name, "enqueue");

    // The flush span links to it, says how many capture spans its data came from, and holds its stages.
    let flushes: Vec<&Received> = spans.iter().filter(|s| s.span.name == "flush").collect();
    let [flush] = flushes.as_slice() else { panic!("one flush span: {flushes:#?}") };
    assert!(flush.span.parent_span_id.is_empty(), "a flush starts its own trace");
    assert_ne!(flush.span.trace_id, segment.span.trace_id, "capture and flush are different traces");
    let links: Vec<(String, String)> = flush.span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect();
    assert_eq!(links, vec![(trace_id.to_string(), span_id.to_string())], "the flush links to the capture span");
    assert_eq!(text(&flush.span.attributes, "table").as_deref(), Some("public.orders"));
    assert_eq!(text(&flush.span.attributes, "capture_spans").as_deref(), Some("1"));
    assert_eq!(text(&flush.span.attributes, "links").as_deref(), Some("1"));
    for stage in ["claim", "arrow_batch", "iceberg_commit", "checkpoint"] {
        let child = spans
            .iter()
            .find(|s| s.span.name == stage && s.span.parent_span_id == flush.span.span_id)
            .unwrap_or_else(|| panic!("a {stage} span under the flush span"));
        assert_eq!(child.span.trace_id, flush.span.trace_id, "{stage} is in the flush's trace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_with_nothing_sampled_or_with_the_sdk_off_segments_carry_no_trace_context() {
    let db = philotes_testkit::shared().database("untraced").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ max_events: 1000, interval: 200ms }");
    let client = connect(&db).await;
    let receiver = Receiver::start().await;

    // The service and sampler set, but no endpoint: no exporter, no span, no context.
    let untraced = [("OTEL_SERVICE_NAME", "philotes-traces-test"), ("OTEL_TRACES_SAMPLER", "always_on")];
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &untraced, "capture-off.log").await;
    db.psql("INSERT INTO orders (id, name, amount) VALUES (1, 'ada', 12.50)").expect("insert");
    wait_durable(&client, &pipeline.name, 1, &capture).await;
    capture.stop_cleanly().await;

    // An endpoint, but a sampler that keeps nothing: spans are made, none sampled, so no context is stored.
    let env = traced(&receiver, "always_off");
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &env, "capture-unsampled.log").await;
    db.psql("INSERT INTO orders (id, name, amount) VALUES (2, 'grace', 7.25)").expect("insert");
    wait_durable(&client, &pipeline.name, 2, &capture).await;
    capture.stop_cleanly().await;

    // An endpoint and every span sampled, but the SDK turned off the standard ways: nothing installed.
    for (i, off) in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")].into_iter().enumerate() {
        let mut env = traced(&receiver, "always_on");
        env.push(off);
        let capture = pipeline.start_streaming(&db, &["--role", "capture"], &env, &format!("capture-disabled-{i}.log")).await;
        db.psql(&format!("INSERT INTO orders (id, name, amount) VALUES ({}, 'off', 1.25)", 3 + i)).expect("insert");
        wait_durable(&client, &pipeline.name, 3 + i as i64, &capture).await;
        capture.stop_cleanly().await;
    }

    let contexts = trace_contexts(&client, &pipeline.name).await;
    assert_eq!(contexts, vec![None, None, None, None], "no segment carries a trace context");
    // The clean stop flushed the exporter: had anything been sampled, it would be here.
    assert_eq!(receiver.requests(), 0, "nothing sampled, nothing exported: {:?}", receiver.spans());
}
