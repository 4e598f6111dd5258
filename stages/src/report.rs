//! Error messages a person can act on: an error and every cause below it, once each (the engine's
//! [`philotes_engine::error_chain`], which its retry log uses too, under the names the stages and the binary use).

pub use philotes_engine::{error_chain as chain, join_causes as join};

/// [`chain`] of a catalog failure, led by what to do when a REST catalog refused the credentials (the
/// crate's message is a generic "unexpected status code" with the response inside).
pub fn catalog_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let text = chain(error);
    for (status, what) in [("401 Unauthorized", "refused the credentials"), ("403 Forbidden", "denied access")] {
        if text.contains(status) {
            return format!(
                "the REST catalog {what} ({status}): check sink.iceberg.catalog.token or credential; {text}"
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refused_credential_says_what_to_check() {
        let e = std::io::Error::other("status: 401 Unauthorized, json: {\"error\": \"wrong bearer token\"}");
        let text = super::catalog_failure(&e);
        assert!(text.starts_with("the REST catalog refused the credentials (401 Unauthorized): check"), "{text}");
        assert!(text.contains("wrong bearer token"), "{text}");
        assert_eq!(super::catalog_failure(&std::io::Error::other("disk full")), "disk full");
    }
}
