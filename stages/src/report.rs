//! Error messages a person can act on: an error and every cause below it, once each (the engine's
//! [`philotes_engine::error_chain`], which its retry log uses too, under the names the stages and the binary use).

pub use philotes_engine::{error_chain as chain, join_causes as join};
