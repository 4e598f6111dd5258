//! The Decode stage: batches of pgoutput frames from the replication source → batches of [`Decoded`] items, in
//! stream order.

use philotes_engine::{Emitter, Stage, StageError};

use super::{Decoded, Decoder};
use crate::position::Lsn;
use crate::source::Frame;

/// The stage's name in metrics, spans and YAML (`stages.decode`).
pub const NAME: &str = "decode";

/// One decoder per pipeline: it follows the transaction boundaries of one stream.
#[derive(Debug, Default)]
pub struct Decode {
    decoder: Decoder,
}

impl Decode {
    /// A stage that drops transactions committed at or before `checkpoint` (already in the buffer).
    pub fn resume_after(checkpoint: Option<Lsn>) -> Self {
        Self { decoder: checkpoint.map_or_else(Decoder::new, Decoder::resume_after) }
    }
}

impl Stage for Decode {
    type In = Vec<Frame>;
    type Out = Vec<Decoded>;

    async fn process(&mut self, frames: &Vec<Frame>, out: &mut Emitter<Vec<Decoded>>) -> Result<(), StageError> {
        let mut decoded = Vec::with_capacity(frames.len());
        for frame in frames {
            // A frame that does not parse, or breaks transaction order, means the stream is not what pgoutput
            // sends: nothing after it can be trusted, so the flow stops (and the capture restarts from its
            // checkpoint).
            self.decoder.push_bytes(frame.data.clone(), &mut decoded).map_err(StageError::fatal)?;
        }
        if !decoded.is_empty() {
            out.emit(decoded);
        }
        Ok(())
    }
}
