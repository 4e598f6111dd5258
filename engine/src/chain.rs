//! Error messages a person can act on: an error and every cause below it, once each.
//!
//! Many errors only say what failed and keep why in their `source()` (tokio-postgres prints "error connecting to
//! server" and hides "Connection refused"; "db error" hides the server's message), while wrappers that print
//! their inner error *and* return it as their source would say it twice ("db error: db error").
//! [`error_chain`] walks the sources once and leaves out any text the message already holds. The engine's retry
//! log uses it; the stages and the binary use it through `philotes_stages::report`.

use std::error::Error;

/// `error` and its causes, joined with ": ", each text once.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut texts = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        texts.push(e.to_string());
        next = e.source();
    }
    join_causes(texts)
}

/// Joins the texts of a cause chain (outermost first) with ": ", leaving out each text that the message built
/// so far already contains (a wrapper that printed its cause already said it).
pub fn join_causes(texts: impl IntoIterator<Item = String>) -> String {
    let mut message = String::new();
    for text in texts {
        let text = text.trim();
        if text.is_empty() || message.contains(text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("source database: {0}")]
    struct Wrapper(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_is_said_once() {
        let error = Wrapper(Inner(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused")));
        assert_eq!(error_chain(&error), "source database: db error: Connection refused");
    }

    #[test]
    fn repeated_texts_are_dropped_wherever_they_come() {
        let texts = ["flusher", "iceberg catalog: pool timed out", "pool timed out", "pool timed out", ""];
        assert_eq!(join_causes(texts.map(String::from)), "flusher: iceberg catalog: pool timed out");
    }
}
