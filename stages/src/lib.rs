//! philotes-stages: the stages of the data path (Decode, SchemaResolve, Enqueue, ArrowBatch, IcebergCommit,
//! Checkpoint) built on `philotes-engine`.

pub mod decode;
pub mod position;
