//! philotes-stages: the stages of the data path (Decode, SchemaResolve, Enqueue, ArrowBatch, IcebergCommit,
//! Checkpoint) built on `philotes-engine`.
//!
//! Empty until the capture and flush issues land; the crate exists so the layout of DESIGN.md holds.
