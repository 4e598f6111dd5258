//! TLS to Postgres against a real server with `ssl = on`: a cluster of the test's own (the shared one is never
//! restarted), a server certificate for `localhost` only, signed by a CA made in the test with rcgen, and
//! `pg_hba.conf` accepting `hostssl` lines only, so a connection that got through used TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use philotes_stages::store::{self, tls};
use philotes_testkit::{Cluster, ClusterOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::flush::{read_with_iceberg_crate, Pipeline};
use crate::support::wait_for;

/// A CA made for one test: its PEM file and what signs with it.
struct TestCa {
    pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(dir: &Path, name: &str) -> TestCa {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, format!("philotes test CA {name}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("CA certificate");
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, cert.pem()).expect("CA file");
    TestCa { pem, issuer: Issuer::new(params, key) }
}

/// A running cluster with TLS on, `hostssl` only, and the CA that signed its certificate (for `localhost` only).
struct TlsCluster {
    cluster: Cluster,
    ca: TestCa,
    wrong_ca: TestCa,
    dir: PathBuf,
}

impl TlsCluster {
    fn start() -> Self {
        let dir = PathBuf::from(format!("/tmp/philotes-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        let ca = make_ca(&certs, "right");
        let wrong_ca = make_ca(&certs, "wrong");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca.issuer).expect("server certificate");
        // The server's files live in the cluster's base directory, which the harness hands to the server's user.
        let base = dir.join("pg");
        std::fs::create_dir_all(&base).expect("base");
        std::fs::write(base.join("server.crt"), cert.pem()).expect("server.crt");
        std::fs::write(base.join("server.key"), key.serialize_pem()).expect("server.key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("key mode");
        let cluster = Cluster::start(&ClusterOptions {
            base: base.clone(),
            port: None,
            owner_pid: Some(std::process::id()),
            extra_settings: vec![
                "ssl = on".into(),
                format!("ssl_cert_file = '{}'", base.join("server.crt").display()),
                format!("ssl_key_file = '{}'", base.join("server.key").display()),
            ],
        })
        .expect("TLS cluster starts");
        cluster
            .set_hba(
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n\
                 hostssl all all ::1/128 trust\nhostssl replication all ::1/128 trust\n",
            )
            .expect("hostssl only");
        Self { cluster, ca, wrong_ca, dir }
    }

    /// A URL of database `db` through `host` with extra query parameters.
    fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{query}", self.cluster.port())
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let config = tls::parse(url, None).map_err(|e| e.to_string())?;
    store::connect(&config).await.map_err(|e| philotes_stages::report::chain(&e))
}

async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("pg_stat_ssl").get(0)
}

#[tokio::test]
async fn tls_verify_full_pipeline_streams_and_flushes_over_tls() {
    let server = TlsCluster::start();
    let db = server.cluster.database("tls_e2e").expect("database");
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)").expect("table");
    let url = server.url("localhost", db.name(), &format!("sslmode=verify-full&sslrootcert={}", server.ca.pem.display()));
    // Source, buffer and SQL catalog all on the TLS URL (buffer and catalog default to the source's).
    let mut pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, interval: 200ms }");
    pipeline.rewrite(&format!("    url: {}\n", db.url()), &format!("    url: \"{url}\"\n"));
    pipeline.catalog_url = url.clone();
    let process = pipeline.start_streaming(&db, &[], &[], "tls.log").await;
    db.psql("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 100) g").expect("insert");
    wait_for("the Iceberg table", Duration::from_secs(60), || async {
        db.psql("SELECT count(*) FROM iceberg_tables WHERE table_name = 'orders'").is_ok_and(|n| n == "1")
    })
    .await;
    let rows = wait_for("the rows in Iceberg", Duration::from_secs(60), || async {
        let rows = read_with_iceberg_crate(&pipeline, "orders").await;
        (rows.len() >= 100).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 100, "every row once");
    // Every session of philotes, the walsender included, is encrypted (hostssl only would refuse it otherwise).
    let sessions = db
        .psql(
            "SELECT string_agg(a.backend_type || ':' || s.ssl, ',' ORDER BY a.backend_type) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'philotes%'",
        )
        .expect("sessions");
    assert!(sessions.contains("walsender:true"), "a TLS walsender: {sessions}");
    assert!(!sessions.contains(":false"), "every philotes session uses TLS: {sessions}");
    process.stop_cleanly().await;
}

#[tokio::test]
async fn tls_wrong_ca_is_refused_naming_the_host_and_the_certificate() {
    let server = TlsCluster::start();
    let url = server.url("localhost", "postgres", &format!("sslmode=verify-full&sslrootcert={}", server.wrong_ca.pem.display()));
    let error = connect(&url).await.map(|_| ()).expect_err("a certificate of an unknown CA is refused");
    assert!(error.contains("localhost") && error.contains("certificate"), "{error}");
    // require with a root certificate verifies the chain too, as libpq does.
    let url = server.url("localhost", "postgres", &format!("sslmode=require&sslrootcert={}", server.wrong_ca.pem.display()));
    let error = connect(&url).await.map(|_| ()).expect_err("require with a root certificate checks it");
    assert!(error.contains("certificate"), "{error}");
}

#[tokio::test]
async fn tls_wrong_host_name_fails_under_verify_full_and_passes_under_verify_ca() {
    let server = TlsCluster::start();
    let root = server.ca.pem.display();
    let error = connect(&server.url("127.0.0.1", "postgres", &format!("sslmode=verify-full&sslrootcert={root}")))
        .await.map(|_| ()).expect_err("a certificate for localhost does not do for 127.0.0.1");
    assert!(error.contains("127.0.0.1") && error.contains("certificate"), "{error}");
    let client = connect(&server.url("127.0.0.1", "postgres", &format!("sslmode=verify-ca&sslrootcert={root}")))
        .await
        .expect("verify-ca does not check the host name");
    assert!(uses_tls(&client).await);
    let client = connect(&server.url("localhost", "postgres", &format!("sslmode=verify-full&sslrootcert={root}")))
        .await
        .expect("verify-full with the right name and CA");
    assert!(uses_tls(&client).await);
}

#[tokio::test]
async fn tls_prefer_and_require_encrypt_and_disable_is_refused_by_hostssl() {
    let server = TlsCluster::start();
    // No sslmode: prefer, as libpq; the server offers TLS, so the session is encrypted.
    let client = connect(&server.url("127.0.0.1", "postgres", "application_name=philotes_prefer")).await.expect("prefer");
    assert!(uses_tls(&client).await);
    let client = connect(&server.url("127.0.0.1", "postgres", "sslmode=require")).await.expect("require, no root cert");
    assert!(uses_tls(&client).await);
    let error = connect(&server.url("127.0.0.1", "postgres", "sslmode=disable")).await.map(|_| ()).expect_err("plaintext refused");
    assert!(error.contains("pg_hba.conf") && error.contains("no encryption"), "{error}");
    let error = connect(&server.url("localhost", "postgres", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"))
        .await.map(|_| ()).expect_err("a missing root certificate file");
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}

#[tokio::test]
async fn tls_philotes_run_with_a_wrong_ca_stops_naming_the_database_and_the_certificate() {
    let server = TlsCluster::start();
    let db = server.cluster.database("tls_wrong_ca").expect("database");
    db.psql("CREATE TABLE orders (id int PRIMARY KEY)").expect("table");
    let url = server.url("localhost", db.name(), &format!("sslmode=verify-full&sslrootcert={}", server.wrong_ca.pem.display()));
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, interval: 200ms }");
    pipeline.rewrite(&format!("    url: {}\n", db.url()), &format!("    url: \"{url}\"\n"));
    let process = pipeline.start(&[], &[], "wrong-ca.log");
    let status = process.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = process.log();
    assert!(log.contains(&format!("localhost:{}/{}", server.cluster.port(), db.name())), "{log}");
    assert!(log.contains("certificate"), "{log}");
}
