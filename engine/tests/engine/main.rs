//! The engine's test binary: order guarantees, backpressure bounds, shutdown drain, error handling and metrics,
//! all in-process with no services; timers run on tokio's paused clock so that the suite stays fast.

mod errors;
mod helpers;
mod ordering;
mod properties;
mod shutdown;
mod stalls;
mod telemetry;
