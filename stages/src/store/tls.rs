//! TLS for every Postgres connection philotes opens: `sslmode` and `sslrootcert` read from the connection string
//! as libpq reads them, one rustls client configuration per setting, and the tokio-postgres connector
//! ([`MakeRustls`]) that [`super::connect`] and the claim pool use; the replication session gets the same
//! settings as `pgwire-replication`'s [`TlsConfig`](pgwire_replication::TlsConfig) ([`Tls::replication`]), the
//! SQL catalog's sqlx pool reads them from its URL itself (sqlx knows all five modes).
//!
//! | `sslmode` | TLS | chain verified | host name verified | plaintext when the server refuses TLS |
//! | --- | --- | --- | --- | --- |
//! | `disable` | no | – | – | – |
//! | `prefer` (default, as libpq) | tried | only with `sslrootcert` | no | yes |
//! | `require` | yes | only with `sslrootcert` (then as `verify-ca`, as libpq) | no | no |
//! | `verify-ca` | yes | yes | no | no |
//! | `verify-full` | yes | yes | yes | no |
//!
//! Roots: the PEM file `sslrootcert` names, or with `sslrootcert=system` (or none) Mozilla's roots
//! (webpki-roots). libpq would read `~/.postgresql/root.crt` when `sslrootcert` is absent; philotes does not.
//!
//! tokio-postgres's `Config` knows only `disable | prefer | require` and refuses `sslrootcert`, so [`parse`]
//! takes both out of the string before tokio-postgres parses it and records the full settings for that
//! connection target (hosts, ports, user, database); [`Tls::of`] finds them again for any copy of the config.
//! One process that reaches the same target with two different explicit settings uses the last one parsed; a
//! string without TLS keys never replaces settings another string gave the same target.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Config;

/// `sslmode`, with libpq's five values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked unless a root certificate is given.
    Require,
    /// TLS, the certificate's chain checked against the roots; any host name.
    VerifyCa,
    /// TLS, the chain checked and the certificate made for the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` (plaintext first, TLS if refused) has no use here: treat it as plaintext-or-TLS.
            "allow" => Self::Prefer,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }
}

/// The TLS settings of one connection target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Tls {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted roots; `None` (or `system`) means Mozilla's roots.
    pub root_cert: Option<PathBuf>,
}

/// Why a connection string or its TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The string does not parse.
    #[error("not a valid PostgreSQL connection string: {0}")]
    Parse(String),
    /// The root certificate file cannot be read or holds no certificate.
    #[error("sslrootcert {path}: {reason}")]
    RootCert {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn registry() -> &'static Mutex<HashMap<String, Tls>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Tls>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The connection target a config reaches, as the key of its TLS settings (a copy whose timeout or options
/// were changed reaches the same target).
fn target(config: &Config) -> String {
    format!("{:?}|{:?}|{:?}|{:?}", config.get_hosts(), config.get_ports(), config.get_user(), config.get_dbname())
}

/// Parses a connection string (URL or key=value) as libpq does, `sslmode` and `sslrootcert` included: the
/// returned config carries the tokio-postgres part of the mode, and [`Tls::of`] returns the full settings.
/// `fallback` applies where the string sets neither key (YAML `source.postgres.tls`).
pub fn parse(raw: &str, fallback: Option<&Tls>) -> Result<Config, TlsError> {
    let (rest, mode, root) = split(raw);
    let explicit = mode.is_some() || root.is_some() || fallback.is_some();
    let mut config = Config::from_str(&rest).map_err(|e| TlsError::Parse(e.to_string()))?;
    let mut tls = fallback.cloned().unwrap_or_default();
    if let Some(mode) = mode {
        tls.mode = mode.parse().map_err(TlsError::Parse)?;
    }
    if let Some(root) = root {
        tls.root_cert = (root != "system" && !root.is_empty()).then(|| PathBuf::from(root));
    }
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    if explicit {
        registry.insert(target(&config), tls);
    } else {
        // A string without TLS keys never weakens what another string said for the same target.
        registry.entry(target(&config)).or_insert(tls);
    }
    Ok(config)
}

/// [`parse`] for callers whose errors are tokio-postgres's: a string it refuses is refused with tokio-postgres's
/// own parse error (every value [`parse`] refuses, tokio-postgres refuses too).
pub fn parse_config(raw: &str) -> Result<Config, tokio_postgres::Error> {
    match parse(raw, None) {
        Ok(config) => Ok(config),
        Err(_) => Config::from_str(raw),
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a key=value string.
fn split(raw: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root = Some(value);
            true
        }
        _ => false,
    };
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        let Some((base, query)) = raw.split_once('?') else { return (raw.to_string(), None, None) };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, percent_decode(value))
            })
            .collect();
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        (rest, mode, root)
    } else {
        // key=value form: values may be quoted; ours never hold spaces in practice, so split on whitespace.
        let kept: Vec<&str> = raw
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\'').to_string())
            })
            .collect();
        (kept.join(" "), mode, root)
    }
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(Ok(byte)) = value.get(i + 1..i + 3).map(|hex| u8::from_str_radix(hex, 16)) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tls {
    /// The settings [`parse`] recorded for this config's target, or those its tokio-postgres mode implies.
    pub fn of(config: &Config) -> Tls {
        if let Some(tls) = registry().lock().unwrap_or_else(|e| e.into_inner()).get(&target(config)) {
            return tls.clone();
        }
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Tls { mode, root_cert: None }
    }

    /// Whether the certificate's chain is checked (verify-ca, verify-full, or a given root certificate).
    pub fn verifies_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) || self.root_cert.is_some()
    }

    /// The rustls client configuration for these settings, built once per distinct setting in a process.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        static BUILT: OnceLock<Mutex<HashMap<Tls, Arc<ClientConfig>>>> = OnceLock::new();
        let built = BUILT.get_or_init(Default::default);
        if let Some(config) = built.lock().unwrap_or_else(|e| e.into_inner()).get(self) {
            return Ok(config.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let config = if self.verifies_chain() {
            let roots = Arc::new(self.roots()?);
            if self.mode == SslMode::VerifyFull {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(inner))).with_no_client_auth()
            }
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth()
        };
        let config = Arc::new(config);
        built.lock().unwrap_or_else(|e| e.into_inner()).insert(self.clone(), config.clone());
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let fail = |reason: String| TlsError::RootCert { path: path.display().to_string(), reason };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| fail(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(e.to_string()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(fail("no certificate in the file".into()));
                }
            }
        }
        Ok(roots)
    }

    /// The tokio-postgres connector for these settings. A settings problem (an unreadable root certificate)
    /// surfaces as the connection's TLS error, naming the file.
    pub fn connector(&self) -> MakeRustls {
        MakeRustls { config: self.client_config().map_err(|e| e.to_string()) }
    }

    /// The same settings for the replication session (`pgwire-replication`), which connects to `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::{SslMode as P, TlsConfig};
        let mode = match self.mode {
            SslMode::Disable => P::Disable,
            SslMode::Prefer if self.root_cert.is_some() => P::VerifyCa,
            SslMode::Prefer => P::Prefer,
            SslMode::Require if self.root_cert.is_some() => P::VerifyCa,
            SslMode::Require => P::Require,
            SslMode::VerifyCa => P::VerifyCa,
            SslMode::VerifyFull => P::VerifyFull,
        };
        let mut config = TlsConfig { mode, ca_pem_path: self.root_cert.clone(), ..TlsConfig::default() };
        if self.mode == SslMode::Prefer && self.root_cert.is_some() {
            // A refused SSLRequest still falls back to plaintext under prefer; the crate's verify-ca would not.
            config.mode = P::Prefer;
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            // The crate refuses verify-full to an IP address unless told the name to check: the address itself
            // (rustls then checks the certificate's IP entries, as libpq does).
            config = config.with_sni_hostname(host);
        }
        config
    }
}

/// `require`/`prefer` without a root certificate: TLS against eavesdropping, any certificate (as libpq).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS connector on rustls (what `tokio-postgres-rustls` does, without its dependency).
#[derive(Clone)]
pub struct MakeRustls {
    config: Result<Arc<ClientConfig>, String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsConnect> {
        // A Unix socket has no host name: the server refuses TLS there, and prefer goes on in plaintext.
        let config = self.config.clone().map_err(io::Error::other)?;
        let name = ServerName::try_from(host.to_string()).ok();
        Ok(RustlsConnect { config, host: host.to_string(), name })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    host: String,
    name: Option<ServerName<'static>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(name) = self.name else {
                return Err(io::Error::other(format!("TLS to `{}`: not a host name or address", self.host)));
            };
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS to {}: {e}", self.host)))?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS-wrapped connection to Postgres.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM's tls-server-end-point binding is not offered (SCRAM without binding, as channel_binding=prefer
        // falls back to); channel_binding=require therefore fails over this connector.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_keys_leave_the_url_and_the_rest_stays() {
        let (rest, mode, root) = split("postgres://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem");
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) = split("host=h sslmode=require dbname=d");
        assert_eq!((rest.as_str(), mode.as_deref(), root), ("host=h dbname=d", Some("require"), None));
    }

    #[test]
    fn the_default_is_prefer_and_the_url_beats_the_fallback() {
        let config = parse("postgres://u@tls-default-host/db", None).unwrap();
        assert_eq!(Tls::of(&config).mode, SslMode::Prefer);
        let fallback = Tls { mode: SslMode::VerifyFull, root_cert: Some("/ca.pem".into()) };
        let config = parse("postgres://u@tls-fallback-host/db?sslmode=verify-ca", Some(&fallback)).unwrap();
        assert_eq!(Tls::of(&config), Tls { mode: SslMode::VerifyCa, root_cert: Some("/ca.pem".into()) });
        assert!(parse("postgres://u@h/db?sslmode=sometimes", None).unwrap_err().to_string().contains("sometimes"));
    }

    #[test]
    fn the_replication_session_gets_the_same_settings() {
        use pgwire_replication::SslMode as P;
        let with_root = |mode| Tls { mode, root_cert: Some("/ca.pem".into()) };
        assert_eq!(Tls::default().replication("db").mode, P::Prefer);
        assert_eq!(Tls { mode: SslMode::Require, root_cert: None }.replication("db").mode, P::Require);
        assert_eq!(with_root(SslMode::Require).replication("db").mode, P::VerifyCa, "require + root = verify-ca, as libpq");
        let full = with_root(SslMode::VerifyFull).replication("127.0.0.1");
        assert_eq!((full.mode, full.sni_hostname.as_deref()), (P::VerifyFull, Some("127.0.0.1")), "an address is checked as one");
        assert_eq!(full.ca_pem_path.as_deref(), Some(std::path::Path::new("/ca.pem")));
    }
}
