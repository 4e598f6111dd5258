//! Error handling: retryable errors are retried without duplicating output (and a shutdown does not wait for a
//! backoff); fatal errors, lost sessions, exhausted retries and panics stop the flow naming the stage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use philotes_engine::{Emitter, Flow, FlowError, RetryPolicy, Stage, StageError, StageOptions};
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

/// Passes inputs on; fails fatally on `fatal_at`, loses its session on `session_lost_at`, panics on `panic_at`.
#[derive(Default)]
struct Convert {
    fatal_at: Option<u64>,
    session_lost_at: Option<u64>,
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
        if Some(*item) == self.session_lost_at {
            return Err(StageError::session_lost(format!("session of {item} lost")));
        }
        out.emit(*item);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_stops_the_flow_as_restartable_naming_the_stage() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let error = Flow::from_stream(futures::stream::iter(0..100u64))
        .stage("convert", StageOptions::new(2, 4), |_| Convert { session_lost_at: Some(37), ..Convert::default() })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("a lost session stops the flow");
    // The role that runs the flow decides on this kind alone whether to start again from its checkpoint.
    assert!(error.is_session_lost(), "{error:?}");
    assert!(matches!(&error, FlowError::SessionLost { stage, .. } if stage == "convert"), "{error:?}");
    assert!(error.to_string().contains("session of 37 lost"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_retry_backoff_stops_at_once_as_interrupted() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let slow = RetryPolicy { base: Duration::from_secs(600), cap: Duration::from_secs(600), max_attempts: u32::MAX };
    let flow = Flow::from_stream(futures::stream::iter(0..10u64))
        .stage("flaky", StageOptions::new(1, 4).retry(slow), |_| Flaky { failures: u32::MAX })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(cancel.clone());
    let started = tokio::time::Instant::now();
    let shutdown = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(flow, shutdown);
    let error = result.expect_err("the input being retried was not processed");
    assert!(error.is_interrupted(), "{error:?}");
    assert_eq!(error.stage(), Some("flaky"));
    // The ten-minute backoff did not hold the shutdown up.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_stops_the_flow_and_names_the_stage() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let taken = Arc::default();
    let error = Flow::from_stream(counting_source(&taken))
        .stage("convert", StageOptions::new(2, 4), |_| Convert { fatal_at: Some(55), ..Convert::default() })
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
        .stage("convert", StageOptions::new(2, 4), |_| Convert { panic_at: Some(42), ..Convert::default() })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("a panic stops the flow");
    assert!(matches!(&error, FlowError::Panicked { stage } if stage == "convert"), "{error:?}");
}

#[tokio::test]
async fn an_invalid_flow_reports_every_problem_before_running() {
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let error = Flow::from_stream(futures::stream::iter(0..1u64))
        .stage("convert", StageOptions::new(0, 4), |_| Convert::default())
        .sink("convert", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect_err("zero workers and a duplicate name");
    let FlowError::Invalid { problems } = error else { panic!("{error:?}") };
    assert_eq!(problems.len(), 2, "{problems:?}");
}
