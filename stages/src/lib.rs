//! philotes-stages: the stages of the data path (Decode, SchemaResolve, Enqueue, ArrowBatch, IcebergCommit,
//! Checkpoint) built on `philotes-engine`.

pub mod arrow_batch;
pub mod capture;
pub mod decode;
pub mod enqueue;
pub mod position;
pub mod report;
pub mod resolve;
pub mod segment;
pub mod source;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod fault;
pub mod flush;
