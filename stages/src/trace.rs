//! Traces from WAL to snapshot, across the buffer. A change is captured in one process and flushed, maybe much
//! later, by another; no span can be the parent of both. So each segment row keeps the W3C `traceparent` of the
//! capture span that enqueued it (`philotes.segments.trace_context`), and the flush that commits segments adds a
//! span link to each distinct capture context among them: from a snapshot's flush trace one follows the links
//! back to the capture batches of its data.
//!
//! Spans: the engine's span of each Enqueue batch (`enqueue`) holds one `segment` span per segment cut from it;
//! a `flush` span (a root: one per flush job, from Claim to Checkpoint) holds `claim` and, through
//! [`philotes_engine::Stage::parent_span`], the engine's `arrow_batch`, `iceberg_commit` and `checkpoint` spans.
//!
//! All of it is off unless the binary installed an OpenTelemetry exporter and called [`enable`]: then no span
//! of this module is made and no trace context formatted, parsed or stored.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::position::Position;
use crate::store::watermarks::ClaimedSegment;
use crate::table_id::TableId;

/// Links a flush span carries at most (OpenTelemetry's default span limit, `OTEL_SPAN_LINK_COUNT_LIMIT`, is the
/// same): a flush of many segments links to the first this many distinct capture contexts, and says how many
/// there were.
pub const MAX_LINKS: usize = 128;

/// The W3C header the context travels in.
const TRACEPARENT: &str = "traceparent";

/// Whether spans go anywhere (an exporter is installed).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns tracing across the buffer on: called once by the binary after it installed the OpenTelemetry layer.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether [`enable`] was called: the one check on the data path when traces are off.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of one segment being filled, from its first change until it is cut, as a child of the current span
/// (the engine's span of the Enqueue batch). `None` when traces are off.
pub(crate) fn segment_span(schema: &str, table: &str, version: i32) -> Option<Span> {
    enabled().then(|| {
        tracing::info_span!("segment", otel.name = "segment", table = %format_args!("{schema}.{table}"),
            schema_version = version, events = tracing::field::Empty, bytes = tracing::field::Empty,
            first = tracing::field::Empty, last = tracing::field::Empty)
    })
}

/// Records what the segment came to on its span and returns the span's `traceparent` for the segment row: `None`
/// when the span is not sampled (nothing would receive a link to it).
pub(crate) fn finish_segment(span: Span, events: usize, bytes: usize, first: Position, last: Position) -> Option<String> {
    span.record("events", events).record("bytes", bytes);
    span.record("first", tracing::field::display(first)).record("last", tracing::field::display(last));
    traceparent(&span)
}

/// The span's W3C `traceparent`, when it is sampled.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut header = Header(None);
    TraceContextPropagator::new().inject_context(&cx, &mut header);
    header.0
}

/// The span context a `traceparent` names (`None`: not a valid one).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Header(Some(traceparent.to_owned())));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The span of one flush job: a root (the flush is nobody's child), linked to the capture spans of the segments
/// it commits. Made once the lease is taken; ends when the job is dropped, after its checkpoint. `Span::none()`
/// when traces are off.
pub(crate) fn flush_span(job: u64, table: &TableId) -> Span {
    if !enabled() {
        return Span::none();
    }
    new_flush_span(job, table)
}

fn new_flush_span(job: u64, table: &TableId) -> Span {
    tracing::info_span!(parent: None, "flush", otel.name = "flush", flush = job, table = %table,
        segments = tracing::field::Empty, events = tracing::field::Empty, capture_spans = tracing::field::Empty,
        links = tracing::field::Empty)
}

/// The `claim` child of a flush span: reading the claimed segments and their schema versions.
pub(crate) fn claim_span(flush: &Span) -> Span {
    if flush.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(parent: flush, "claim", otel.name = "claim")
}

/// Adds to `flush` a link to each distinct capture span context of `segments` (at most [`MAX_LINKS`]) and
/// records how many segments, changes and distinct capture contexts the flush holds.
pub(crate) fn link_segments(flush: &Span, segments: &[ClaimedSegment]) {
    if flush.is_disabled() {
        return;
    }
    let events: i64 = segments.iter().map(|s| i64::from(s.events)).sum();
    let mut seen: Vec<&str> = Vec::new();
    let mut links = 0usize;
    for context in segments.iter().filter_map(|s| s.trace_context.as_deref()) {
        if seen.contains(&context) {
            continue;
        }
        seen.push(context);
        if links < MAX_LINKS {
            if let Some(capture) = parse(context) {
                flush.add_link(capture);
                links += 1;
            }
        }
    }
    flush.record("segments", segments.len()).record("events", events);
    flush.record("capture_spans", seen.len()).record("links", links);
}

/// Holds a `traceparent` for the propagator (the one header it reads and writes here).
struct Header(Option<String>);

impl Injector for Header {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Header {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_parses_into_its_span_context_and_garbage_does_not() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parse(header).expect("a valid traceparent");
        assert_eq!(cx.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        assert!(cx.is_sampled() && cx.is_remote());
        assert!(parse("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none(), "zero trace id");
        assert!(parse("not a traceparent").is_none());
    }

    #[test]
    fn a_flush_links_each_distinct_capture_context_once_up_to_the_cap_and_counts_them_all() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        // 300 segments from 150 capture spans (two segments each), and one segment written with traces off.
        let context = |i: u64| format!("00-{:032x}-{:016x}-01", 7, i + 1);
        let mut segments: Vec<ClaimedSegment> = (0..300)
            .map(|i| ClaimedSegment {
                id: i,
                schema_version: 1,
                first: Position::default(),
                last: Position::default(),
                events: 10,
                trace_context: Some(context(i as u64 / 2)),
            })
            .collect();
        segments[150].trace_context = None;
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            link_segments(&new_flush_span(1, &TableId::new("public", "t")), &segments);
        });
        let spans = exporter.get_finished_spans().expect("spans");
        let [flush] = spans.as_slice() else { panic!("one span: {spans:?}") };
        let linked: Vec<String> = flush.links.iter().map(|l| format!("00-{}-{}-01", l.span_context.trace_id(), l.span_context.span_id())).collect();
        let expected: Vec<String> = (0..MAX_LINKS as u64).map(context).collect();
        assert_eq!(linked, expected, "the first {MAX_LINKS} distinct capture spans, in order, once each");
        assert_eq!(flush.links.dropped_count, 0, "philotes' cap, not the SDK's, decides");
        let attribute = |key: &str| flush.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
        assert_eq!(attribute("capture_spans").as_deref(), Some("150"));
        assert_eq!(attribute("links").as_deref(), Some("128"));
        assert_eq!((attribute("segments").as_deref(), attribute("events").as_deref()), (Some("300"), Some("3000")));
    }

    #[test]
    fn without_an_exporter_no_span_is_made_and_no_context_stored() {
        // Nothing here calls `enable` (the binary does), so the data path does nothing.
        assert!(!enabled());
        assert!(segment_span("public", "t", 1).is_none());
        assert!(flush_span(1, &TableId::new("public", "t")).is_disabled());
        assert_eq!(traceparent(&Span::none()), None);
    }
}
