//! Error handling: retryable errors are retried without duplicating output, bad items are dead-lettered and the
//! flow goes on, fatal errors (and exhausted retries, and panics) stop the flow naming the stage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use philotes_engine::{DeadLetterFn, Emitter, Flow, FlowError, RetryPolicy, Stage, StageError, StageOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{counting_source, Collect};

/// Fails `failures` times on input 5 (after emitting a partial output), then succeeds; emits `n*10` for each
/// input and also `n*10+1` for input 5.
struct Flaky {
    failures: u32,
}

impl Stage for Flaky {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
        out.emit(item * 10);
        if *item == 5 {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(StageError::retryable("connection lost"));
            }
            out.emit(item * 10 + 1);
        }
        Ok(())
    }
}

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1), max_attempts }
}

#[tokio::test(start_paused = true)]
async fn a_retryable_error_succeeds_after_retries_without_duplicating_output() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let started = tokio::time::Instant::now();
    let report = Flow::from_stream(futures::stream::iter(0..10u64))
        .stage("flaky", StageOptions::new(1, 4).retry(retry(5)), |_| Flaky { failures: 3 })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect("the retries succeed");
    let mut expected: Vec<u64> = (0..10).map(|n| n * 10).collect();
    expected.insert(6, 51);
    assert_eq!(*received.lock().unwrap(), expected);
    assert_eq!(report.stage("flaky").map(|s| s.retries), Some(3));
    // Backoff 100 + 200 + 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn a_retryable_error_becomes_fatal_after_max_attempts() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let error = Flow::from_stream(futures::stream::iter(0..10u64))
        .stage("flaky", StageOptions::new(1, 4).retry(retry(3)), |_| Flaky { failures: u32::MAX })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("retries run out");
    assert!(matches!(&error, FlowError::RetriesExhausted { attempts: 3, .. }), "{error:?}");
    assert_eq!(error.stage(), Some("flaky"));
    assert!(error.to_string().contains("connection lost"), "{error}");
}

/// Rejects every multiple of ten as unconvertible; fails fatally on `fatal_at`; panics on `panic_at`.
struct Convert {
    fatal_at: Option<u64>,
    panic_at: Option<u64>,
}

impl Stage for Convert {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
        if Some(*item) == self.fatal_at {
            return Err(StageError::fatal(format!("invariant broken at {item}")));
        }
        if Some(*item) == self.panic_at {
            panic!("bug at {item}");
        }
        if matches!(item % 10, 0) {
            return Err(StageError::bad_item(format!("cannot convert {item}")));
        }
        out.emit(*item);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_item_reaches_the_dead_letter_handler_and_the_flow_goes_on() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let letters = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&letters);
    let report = Flow::from_stream(futures::stream::iter(0..100u64))
        .stage("convert", StageOptions::new(3, 4), |_| Convert { fatal_at: None, panic_at: None })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .dead_letters(DeadLetterFn(move |letter| sink.lock().unwrap().push(letter)))
        .run(CancellationToken::new())
        .await
        .expect("bad items do not stop the flow");
    let expected: Vec<u64> = (0..100).filter(|n| n % 10 != 0).collect();
    assert_eq!(*received.lock().unwrap(), expected);
    let letters = letters.lock().unwrap();
    assert_eq!(letters.len(), 10);
    let mut items: Vec<u64> = letters.iter().map(|l| l.item.parse().expect("rendered with Debug")).collect();
    items.sort_unstable();
    assert_eq!(items, (0..100).step_by(10).collect::<Vec<u64>>());
    for letter in letters.iter() {
        assert_eq!(letter.stage, "convert");
        assert_eq!(letter.reason, format!("cannot convert {}", letter.item));
    }
    assert_eq!(report.stage("convert").map(|s| s.dead_letters), Some(10));
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_stops_the_flow_and_names_the_stage() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let taken = Arc::default();
    let error = Flow::from_stream(counting_source(&taken))
        .stage("convert", StageOptions::new(2, 4), |_| Convert { fatal_at: Some(55), panic_at: None })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("an endless flow stops on a fatal error");
    assert_eq!(error.stage(), Some("convert"));
    assert!(matches!(&error, FlowError::Fatal { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("`convert`") && message.contains("invariant broken at 55"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stage_stops_the_flow_and_names_the_stage() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let error = Flow::from_stream(futures::stream::iter(1..100u64))
        .stage("convert", StageOptions::new(2, 4), |_| Convert { fatal_at: None, panic_at: Some(42) })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .dead_letters(DeadLetterFn(|_| {}))
        .run(CancellationToken::new())
        .await
        .expect_err("a panic stops the flow");
    assert!(matches!(&error, FlowError::Panicked { stage } if stage == "convert"), "{error:?}");
}

#[tokio::test]
async fn an_invalid_flow_reports_every_problem_before_running() {
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let error = Flow::from_stream(futures::stream::iter(0..1u64))
        .stage("convert", StageOptions::new(0, 4), |_| Convert { fatal_at: None, panic_at: None })
        .sink("convert", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("zero workers and a duplicate name");
    let FlowError::Invalid { problems } = error else { panic!("{error:?}") };
    assert_eq!(problems.len(), 2, "{problems:?}");
}
