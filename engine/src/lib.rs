//! philotes-engine: the generic stream-of-stages runtime. A [`Flow`] joins a [`Source`], typed [`Stage`]s and a
//! sink with bounded edges; the engine owns every task and channel, runs each stage as a pool of workers in the
//! [`Mode`] it declares, retries or stops on errors, drains on shutdown, and measures every stage.
//! It knows nothing of Postgres or Iceberg.
//!
//! ```
//! use philotes_engine::{Emitter, Flow, Mode, Stage, StageError, StageOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Double;
//! impl Stage for Double {
//!     type In = u64;
//!     type Out = u64;
//!     async fn process(&mut self, n: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
//!         out.emit(n * 2);
//!         Ok(())
//!     }
//! }
//!
//! struct Print;
//! impl Stage for Print {
//!     type In = u64;
//!     type Out = ();
//!     async fn process(&mut self, n: &u64, _: &mut Emitter<()>) -> Result<(), StageError> {
//!         println!("{n}");
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let report = Flow::from_stream(futures::stream::iter(0..10u64))
//!     .stage("double", StageOptions::new(4, 16), |_worker| Double)
//!     .stage("again", StageOptions::new(2, 16).mode(Mode::Unordered), |_| Double)
//!     .sink("print", StageOptions::new(1, 8), |_| Print)
//!     .run(CancellationToken::new())
//!     .await?;
//! assert_eq!(report.stage("print").map(|s| s.items_in), Some(10));
//! # Ok::<(), philotes_engine::FlowError>(())
//! # }).unwrap();
//! ```

mod chain;
mod edge;
mod error;
mod flow;
mod options;
mod pool;
mod report;
mod retry;
mod stage;
pub mod telemetry;
mod worker;

pub use chain::{error_chain, join_causes};
pub use error::{Action, BoxError, FlowError, StageError};
pub use flow::{Flow, FlowBuilder, SOURCE_STAGE};
pub use options::{RetryPolicy, StageOptions, MAX_IN_FLIGHT};
pub use report::{FlowReport, StageReport};
pub use stage::{Emitter, Mode, Source, Stage, StreamSource};
