//! philotes-stages: the stages of the data path built on `philotes-engine`, one folder per stage, and the two
//! roles that assemble them.
//!
//! - capture role ([`capture`]): [`source`] (ReplicationSource) → [`decode`] → [`resolve`] (SchemaResolve) →
//!   [`enqueue`];
//! - flusher role ([`flush`]): [`claim`] (the flush job, [`claim::job`]) → [`arrow_batch`] → [`iceberg_commit`]
//!   → [`checkpoint`];
//! - maintenance ([`maintenance`]): compaction and snapshot expiry of the tables, under their flush leases;
//! - shared: [`store`] (SQL of the buffer's tables), [`catalog`] (the Iceberg catalog and table preparation),
//!   [`changelog`] (the changelog table layout), [`op`] (the kind of a change), [`segment`] (the buffer's payload format), [`position`],
//!   [`table_id`], [`trace`] (traces across the buffer).

pub mod arrow_batch;
pub mod capture;
pub mod catalog;
pub mod changelog;
pub mod checkpoint;
pub mod claim;
pub mod decode;
pub mod enqueue;
pub mod fault;
pub mod flush;
pub mod iceberg_commit;
pub mod load;
pub mod maintenance;
pub mod mirror;
pub mod op;
pub mod position;
pub mod report;
pub mod resolve;
pub mod retry;
pub mod segment;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod supervise;
pub mod table_id;
pub mod telemetry;
pub mod trace;
