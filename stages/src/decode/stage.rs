//! The Decode stage: pgoutput frames from the replication source → [`Decoded`] items, in stream order.

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
    type In = Frame;
    type Out = Decoded;

    async fn process(&mut self, frame: &Frame, out: &mut Emitter<Decoded>) -> Result<(), StageError> {
        let mut decoded = Vec::new();
        // A frame that does not parse, or breaks transaction order, means the stream is not what pgoutput sends:
        // nothing after it can be trusted, so the flow stops (and the capture restarts from its checkpoint).
        self.decoder.push_bytes(frame.data.clone(), &mut decoded).map_err(StageError::fatal)?;
        for item in decoded {
            out.emit(item);
        }
        Ok(())
    }
}
