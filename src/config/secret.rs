//! Values that must never reach logs: [`Secret`] strings, [`PostgresUrl`] connection strings and
//! [`RedactedUrl`]s.
//!
//! Their `Debug` output is redacted, so `tracing::debug!(?config)` or an `{:?}` in an error is safe.
//! The plain value is available only through an explicitly named accessor (`expose`).

use std::fmt;

/// What is printed in place of a secret.
pub const REDACTED: &str = "***";

/// A secret string (password, access key, token). `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to a client library; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A PostgreSQL connection string, checked to parse, whose password is never printed.
///
/// Accepts what libpq and `tokio_postgres` accept: `postgres://…`, `postgresql://…` or the
/// `key=value` form. `Debug`/`Display` show it with the password replaced by `***`.
#[derive(Clone)]
pub struct PostgresUrl {
    raw: String,
    config: tokio_postgres::Config,
}

impl PostgresUrl {
    /// Parses a connection string; the error message never contains the input.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "postgres" && scheme != "postgresql" {
                return Err(format!(
                    "expected a postgres:// or postgresql:// URL (or key=value form), found a {scheme}:// URL"
                ));
            }
        }
        // `sslmode` (all of libpq's values) and `sslrootcert` are read here too (philotes_stages::store::tls).
        let config = philotes_stages::store::tls::parse(raw, None).map_err(|e| e.to_string())?;
        if config.get_hosts().is_empty() {
            return Err("the PostgreSQL connection string names no host".into());
        }
        Ok(Self {
            raw: raw.to_owned(),
            config,
        })
    }

    /// This connection string with `keys` added where it does not set them (`None` values are skipped).
    pub fn with_defaults(&self, keys: &[(&str, Option<String>)]) -> Result<Self, String> {
        let mut raw = self.raw.clone();
        for (key, value) in keys {
            let Some(value) = value else { continue };
            if self.is_url() {
                let query = raw.split_once('?').map_or("", |(_, q)| q);
                if query.split('&').any(|pair| pair.split('=').next() == Some(*key)) {
                    continue;
                }
                let encoded: String = value
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                raw.push(if raw.contains('?') { '&' } else { '?' });
                raw.push_str(&format!("{key}={encoded}"));
            } else {
                if raw.split_whitespace().any(|pair| pair.split('=').next() == Some(*key)) {
                    continue;
                }
                raw.push_str(&format!(" {key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        Self::parse(&raw)
    }

    /// The connection string as written (after `${…}` interpolation), password included.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The parsed connection settings, ready for `tokio_postgres`.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Whether it is a URL (`postgres://`/`postgresql://`) rather than the `key=value` form;
    /// URL-only consumers (sqlx, behind the SQL catalog) need this.
    pub fn is_url(&self) -> bool {
        self.raw.starts_with("postgres://") || self.raw.starts_with("postgresql://")
    }

    /// The connection string with its password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_connection_string(&self.raw)
    }
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({:?})", self.redacted())
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A URL (e.g. a REST catalog URI) printed with any password in it replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL as written, credentials included; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_connection_string(&self.0))
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_connection_string(&self.0))
    }
}

/// Replaces passwords in a URL (`user:pw@`, `?password=`) or `key=value` string with `***`.
///
/// Any URL scheme works (`postgres://`, `https://`), so it also serves REST catalog URIs.
pub fn redact_connection_string(raw: &str) -> String {
    match raw.find("://") {
        Some(scheme_end) => redact_url(raw, scheme_end + 3),
        None => redact_key_values(raw),
    }
}

/// `scheme://user:pw@host/db?password=x` → `scheme://user:***@host/db?password=***`.
fn redact_url(raw: &str, authority_start: usize) -> String {
    let (head, rest) = raw.split_at(authority_start);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = head.to_owned();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}={REDACTED}"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// `host=h password='x y' user=u` → `host=h password=*** user=u`.
fn redact_key_values(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(eq) = rest.find('=') {
        let before = rest[..eq].trim_end();
        let key = &before[before.rfind(char::is_whitespace).map_or(0, |i| i + 1)..];
        out.push_str(&rest[..=eq]);
        let value = rest[eq + 1..].trim_start();
        out.push_str(&rest[eq + 1..rest.len() - value.len()]);
        let value_len = key_value_len(value);
        if is_secret_key(key) {
            out.push_str(REDACTED);
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// Length of one `key=value` value: up to whitespace, or a whole `'quoted \' value'`.
fn key_value_len(value: &str) -> usize {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return i + 2,
                _ => {}
            }
        }
        value.len()
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key == "token"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_in_userinfo_and_query() {
        assert_eq!(
            redact_connection_string("postgres://app:s3cr3t@db:5432/x?sslmode=require&password=p2"),
            "postgres://app:***@db:5432/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_connection_string("postgresql://app@db/x"),
            "postgresql://app@db/x"
        );
    }

    #[test]
    fn key_value_passwords_are_redacted_even_when_quoted() {
        assert_eq!(
            redact_connection_string("host=db password='a b\\' c' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            redact_connection_string("host=db password = hunter2"),
            "host=db password = ***"
        );
    }

    #[test]
    fn postgres_urls_print_without_their_password() {
        let url = PostgresUrl::parse("postgres://app:hunter2@db:5432/x").unwrap();
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(url.expose(), "postgres://app:hunter2@db:5432/x");
        assert!(url.is_url());
    }

    #[test]
    fn connection_strings_that_do_not_parse_or_name_no_host_are_refused() {
        assert!(PostgresUrl::parse("postgres://db:notaport/x").is_err());
        assert!(PostgresUrl::parse("dbname=x")
            .unwrap_err()
            .contains("no host"));
        assert!(PostgresUrl::parse("host=db dbname=x").is_ok());
    }

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::new("AKIAXYZ");
        assert_eq!(format!("{secret:?} {secret}"), "Secret(***) ***");
        assert_eq!(secret.expose(), "AKIAXYZ");
    }
}
