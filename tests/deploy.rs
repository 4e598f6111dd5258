//! `deploy/` checked with the tools its users run: hadolint on the Dockerfile, kubernetes-validate (offline, with
//! its bundled schemas) and a structural reading of the Kubernetes manifests, `systemd-analyze` on the units,
//! promtool on the scrape config and the alert rules; and Debian's Prometheus, with deploy/'s scrape config and
//! alert rules, scraping a real capture and flusher: what the Grafana dashboard, the alerts and the KEDA trigger
//! query exists in philotes' /metrics and answers through the Prometheus HTTP API.
//!
//! Every tool is required: one that is missing fails its test, naming how to install it (`bash .ci/run` does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::flush::{drained, last_commit, Pipeline};
use crate::support::{database, free_port, http_get, wait_for};

/// `deploy/` of this checkout.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A program of the venv `.ci/run` makes (beside `PHILOTES_PYTHON`).
fn venv_program(name: &str) -> PathBuf {
    let program = Path::new(&crate::flush::python()).with_file_name(name);
    assert!(program.exists(), "{} is missing: run `bash .ci/run` once (it installs it into the venv)", program.display());
    program
}

/// A program of Debian's packages, which `.ci/run` installs.
fn system_program(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| panic!("{name} is not installed: `apt-get install {package}` (bash .ci/run does it as root)"))
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, text(&out));
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

// --- Dockerfile --------------------------------------------------------------------------------------------------

#[test]
fn the_dockerfile_passes_hadolint_with_every_rule_on() {
    let out = run_ok(
        Command::new(venv_program("hadolint"))
            .args(["--no-color", "--failure-threshold", "style"])
            .arg(deploy().join("Dockerfile")),
    );
    assert_eq!(text(&out).trim(), "", "hadolint reports nothing");
}

#[test]
fn the_dockerfile_builds_with_a_toolchain_the_locked_dependencies_accept_and_runs_as_documented() {
    let dockerfile = read(&deploy().join("Dockerfile"));
    let builder = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|rest| rest.split(['-', ' ']).next())
        .expect("a rust builder stage");
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().expect("a version number")).take(2).collect() };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run_ok(Command::new(cargo).args(["metadata", "--format-version", "1", "--locked", "--offline"]).current_dir(env!("CARGO_MANIFEST_DIR")));
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let newest = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?.to_string())))
        .max()
        .expect("packages with a rust-version");
    assert!(version(builder) >= newest.0, "the builder's Rust {builder} is older than {} wants ({:?})", newest.1, newest.0);

    // The image runs the binary as a numeric non-root user, on the documented pipeline path, metrics on 0.0.0.0.
    assert!(dockerfile.contains("USER 10001:10001"), "a numeric non-root user");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/philotes"]"#));
    assert!(dockerfile.contains(r#"CMD ["run", "/etc/philotes/pipeline.yaml", "--metrics", "0.0.0.0:9464"]"#));
    assert!(dockerfile.contains("FROM debian:12-slim"), "a small runtime image");
}

// --- Kubernetes ----------------------------------------------------------------------------------------------------

/// Every document of every manifest listed in kustomization.yaml, parsed.
fn manifests() -> Vec<Value> {
    let dir = deploy().join("kubernetes");
    let kustomization: Value = serde_saphyr::from_str(&read(&dir.join("kustomization.yaml"))).expect("kustomization.yaml parses");
    let resources = kustomization["resources"].as_array().expect("resources");
    let mut docs = Vec::new();
    for resource in resources {
        let path = dir.join(resource.as_str().expect("a file name"));
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        docs.extend(parsed);
    }
    // Every manifest of the folder is listed (none forgotten by `kubectl apply -k`).
    let files = std::fs::read_dir(&dir).expect("deploy/kubernetes").filter(|e| {
        let name = e.as_ref().expect("entry").file_name();
        name != "kustomization.yaml" && name.to_string_lossy().ends_with(".yaml")
    });
    assert_eq!(files.count(), resources.len(), "kustomization.yaml lists every manifest of deploy/kubernetes");
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn the_kubernetes_manifests_pass_kubernetes_validate_with_its_bundled_schemas() {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    // Strict: an unknown field (a typo) is an error. KEDA's ScaledObject and the Kustomization have no bundled
    // schema (a warning, "Couldn't find schema for kind ScaledObject …"): the next test reads them; every other
    // kind must have been checked against its schema.
    let out = run_ok(Command::new(venv_program("kubernetes-validate")).args(["--strict", "--quiet"]).args(&files));
    for doc in manifests().iter().filter(|d| d["apiVersion"] != "keda.sh/v1alpha1") {
        let (kind, name) = (doc["kind"].as_str().expect("kind"), doc["metadata"]["name"].as_str().expect("name"));
        assert!(!text(&out).contains(&format!("kind {kind} ")), "{kind} {name} was validated: {}", text(&out));
    }
}

#[test]
fn the_capture_is_one_recreated_replica_and_keda_scales_the_flushers_on_the_buffer_depth() {
    let docs = manifests();
    let config_map = find(&docs, "ConfigMap", "philotes-pipeline");
    let secret = find(&docs, "Secret", "philotes-secrets");
    let capture = find(&docs, "Deployment", "philotes-capture");
    let flusher = find(&docs, "Deployment", "philotes-flusher");
    assert_eq!(capture["spec"]["replicas"], 1, "one capture");
    assert_eq!(capture["spec"]["strategy"]["type"], "Recreate", "never two captures of one slot, even in a rollout");
    assert!(flusher["spec"].get("replicas").is_none(), "KEDA owns the flushers' replicas");

    let pipeline = config_map["data"]["pipeline.yaml"].as_str().expect("the pipeline file in the ConfigMap");
    for (deployment, role) in [(capture, "capture"), (flusher, "flusher")] {
        let pod = &deployment["spec"]["template"]["spec"];
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels, "{role}: the selector matches the pods");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{role}");
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("arg")).collect();
        assert_eq!(args, ["run", "/etc/philotes/pipeline.yaml", "--role", role]);
        // The pipeline file path of the command is where the ConfigMap's key is mounted.
        let mount = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "pipeline")
            .expect("the pipeline mount");
        let volume = pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "pipeline").expect("volume");
        assert_eq!(volume["configMap"]["name"], "philotes-pipeline", "{role}");
        assert_eq!(format!("{}/pipeline.yaml", mount["mountPath"].as_str().expect("path")), args[1], "{role}");
        assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"], "{role}: the Secret");
        // Probes on the metrics port, which the pipeline file binds on every interface.
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{role}");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{role}");
        let port = container["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "metrics").expect("port");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{role} {probe}");
        }
        assert!(pipeline.contains(&format!("metrics: 0.0.0.0:{}", port["containerPort"])), "{role}: metrics on 0.0.0.0");
    }

    let scaled = find(&docs, "ScaledObject", "philotes-flusher");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "philotes-flusher", "KEDA scales the flushers");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = trigger["metadata"]["query"].as_str().expect("query");
    assert!(query.contains("philotes_cdc_buffer_depth"), "{query}");
    let name: Value = serde_saphyr::from_str::<Value>(pipeline).expect("pipeline parses")["pipeline"].clone();
    assert!(query.contains(&format!("pipeline=\"{}\"", name.as_str().expect("name"))), "the trigger's pipeline: {query}");
    assert!(trigger["metadata"]["threshold"].as_str().is_some_and(|t| t.parse::<u64>().is_ok()), "a threshold (a string)");
}

#[test]
fn the_pipeline_file_of_the_config_map_validates_with_the_secret_as_its_only_environment() {
    let docs = manifests();
    let pipeline = find(&docs, "ConfigMap", "philotes-pipeline")["data"]["pipeline.yaml"].as_str().expect("pipeline").to_string();
    let secret = find(&docs, "Secret", "philotes-secrets")["stringData"].as_object().expect("stringData").clone();
    let dir = std::env::temp_dir().join(format!("philotes-deploy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, pipeline).expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_philotes"));
    cmd.arg("validate").arg(&file).env_clear();
    for (key, value) in &secret {
        cmd.env(key, value.as_str().expect("a string"));
    }
    let out = run_ok(&mut cmd);
    assert!(text(&out).contains(": ok"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(dir);
}

// --- systemd -------------------------------------------------------------------------------------------------------

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let analyze = system_program("systemd-analyze", "systemd");
    let dir = std::env::temp_dir().join(format!("philotes-deploy-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The units as installed, but with this build's binary: `verify` checks that ExecStart is executable.
    for unit in ["philotes-capture.service", "philotes-flush@.service"] {
        let text = read(&deploy().join("systemd").join(unit));
        assert!(text.contains("ExecStart=/usr/local/bin/philotes run /etc/philotes/pipeline.yaml --role "), "{unit}");
        std::fs::write(dir.join(unit), text.replace("/usr/local/bin/philotes", env!("CARGO_BIN_EXE_philotes"))).expect("write");
    }
    // A template is verified through an instance: the flusher whose /metrics is on port 9465.
    for unit in ["philotes-capture.service", "philotes-flush@9465.service"] {
        let path = dir.join(unit);
        let out = run_ok(Command::new(&analyze).arg("verify").arg(&path));
        // Unknown keys and bad values are only warnings for systemd: any output is a failure here.
        assert_eq!(text(&out).trim(), "", "systemd-analyze verify {unit}");
        // Exposure 2.0 or lower ("OK" on systemd's 0–10 scale; the threshold is in tenths).
        run_ok(Command::new(&analyze).args(["security", "--offline=yes", "--threshold=20"]).arg(&path));
    }
    let _ = std::fs::remove_dir_all(dir);
}

// --- Prometheus ----------------------------------------------------------------------------------------------------

#[test]
fn the_scrape_config_and_the_alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = system_program("promtool", "prometheus");
    let dir = deploy().join("prometheus");
    run_ok(Command::new(&promtool).args(["check", "config"]).arg(dir.join("prometheus.yml")));
    run_ok(Command::new(&promtool).args(["check", "rules"]).arg(dir.join("alerts.yml")));
    run_ok(Command::new(&promtool).args(["test", "rules", "alerts_test.yml"]).current_dir(&dir));
}

/// Every PromQL expression of deploy/: the dashboard's targets and variable, the alert rules, the KEDA trigger.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboard: Value = serde_json::from_str(&read(&deploy().join("grafana/philotes.json"))).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().filter(|p| p["type"] != "row").count() >= 10, "the dashboard has its panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((format!("dashboard panel {}", panel["title"]), target["expr"].as_str().expect("expr").to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = variable["definition"].as_str() {
            out.push((format!("dashboard variable {}", variable["name"]), query.to_string()));
        }
    }
    let alerts: Value = serde_saphyr::from_str(&read(&deploy().join("prometheus/alerts.yml"))).expect("alerts.yml");
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            out.push((format!("alert {}", rule["alert"]), rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    let scaled = find(&manifests(), "ScaledObject", "philotes-flusher").clone();
    out.push(("the KEDA trigger".into(), scaled["spec"]["triggers"][0]["metadata"]["query"].as_str().expect("query").to_string()));
    out
}

/// The `philotes_…` metric names in a PromQL expression (label values and strings are not names: a name is
/// followed by `{`, `[`, `)`, `,`, a space or the end).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("philotes_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let quoted = rest[..start].ends_with('"') || rest[..start].ends_with('~');
        if !quoted {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names in a Prometheus text exposition (histograms as their `_bucket`, `_sum` and `_count` lines).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Debian's Prometheus on a temp dir, as an unprivileged user when the test runs as root (as the test cluster
/// does). Killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT` of its HTTP API.
    addr: String,
}

impl Prometheus {
    /// Starts it with `config` (written as `prometheus.yml` beside a copy of deploy/'s alerts.yml).
    async fn start(config: &str, name: &str) -> Self {
        let binary = system_program("prometheus", "prometheus");
        let dir = std::env::temp_dir().join(format!("philotes-prometheus-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        std::fs::copy(deploy().join("prometheus/alerts.yml"), dir.join("alerts.yml")).expect("alerts");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = match unprivileged_user() {
            Some(user) => {
                chown_to(&dir.join("data"), &user);
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid", &user, "--regid", &user, "--init-groups", "--reset-env", "--"]).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("prometheus starts");
        let prometheus = Self { child, dir, addr };
        let what = format!("Prometheus to be ready; its log:\n{}", prometheus.log());
        wait_for(&what, Duration::from_secs(60), || async { http_get(&prometheus.addr, "/-/ready").await.starts_with("HTTP/1.1 200") }).await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` (PATH with its query string), the JSON answer's `data`; fails the test on an error.
    async fn api(&self, path: &str) -> Value {
        let response = http_get(&self.addr, &format!("/api/v1/{path}")).await;
        let json: Value = serde_json::from_str(&body(&response)).unwrap_or_else(|e| panic!("/api/v1/{path}: {e}: {response}"));
        assert_eq!(json["status"], "success", "/api/v1/{path}: {json}");
        json["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", encode(promql))).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The body of an HTTP/1.1 response, its chunks joined when Prometheus sends it chunked (a longer answer).
fn body(response: &str) -> String {
    let (head, rest) = response.split_once("\r\n\r\n").unwrap_or_default();
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return rest.to_string();
    }
    // Chunk sizes count bytes, and a chunk may end inside a character.
    let (mut rest, mut body) = (rest.as_bytes(), Vec::new());
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]).trim().to_string();
        let size = usize::from_str_radix(&size, 16).unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[(eol + 4 + size).min(rest.len())..];
    }
    String::from_utf8(body).expect("a UTF-8 body")
}

/// The test cluster's server user when this runs as root (Prometheus, like Postgres, is not run as root here).
fn unprivileged_user() -> Option<String> {
    let uid = run_ok(Command::new("id").arg("-u"));
    (String::from_utf8_lossy(&uid.stdout).trim() == "0").then(|| philotes_testkit::SERVER_USER.to_string())
}

fn chown_to(path: &Path, user: &str) {
    let id = |flag: &str| -> u32 {
        let out = run_ok(Command::new("id").arg(flag).arg(user));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("an id")
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g"))).expect("chown");
}

/// Percent-encodes a query parameter.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// deploy/'s scrape config for this test: only the targets (the capture's and the flusher's addresses) and the
/// intervals (1 s instead of 15 s) differ.
fn scrape_config(capture: &str, flusher: &str) -> String {
    let mut config = read(&deploy().join("prometheus/prometheus.yml"));
    for (from, to) in [
        (r#"["127.0.0.1:9464"]"#, format!(r#"["{capture}"]"#)),
        (r#"["127.0.0.1:9465", "127.0.0.1:9466"]"#, format!(r#"["{flusher}"]"#)),
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".to_string()),
    ] {
        assert!(config.contains(from), "deploy/prometheus/prometheus.yml has no {from}");
        config = config.replace(from, &to);
    }
    config
}

/// The value of a one-element query result.
fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_deploy_s_config_reads_back_what_philotes_wrote_and_every_queried_metric_exists() {
    let db = database("deploy_prometheus");
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, arr int[])").expect("schema");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, interval: 200ms }");
    let (capture_addr, flusher_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    // As deploy/systemd/ runs them: one capture, one flusher, each with its own /metrics.
    let capture = pipeline.start_streaming(&db, &["--role", "capture", "--metrics", &capture_addr], &[], "capture.log").await;
    let flusher = pipeline.start(&["--role", "flusher", "--metrics", &flusher_addr], &[], "flusher.log");
    let prometheus = Prometheus::start(&scrape_config(&capture_addr, &flusher_addr), db.name()).await;

    // One change that lands in Iceberg, one that is dead-lettered (a 2-D array: philotes maps one dimension).
    let after = last_commit(&db, "INSERT INTO orders VALUES (1, '{1}'), (2, '{{1,2},{3,4}}')");
    capture.wait_until("the insert in Iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;

    // Read back through the Prometheus HTTP API, as the dashboard does.
    let selector = format!(r#"job="philotes",pipeline="{}""#, pipeline.name);
    for (metric, want) in [("philotes_cdc_events_processed_total", 1.0), ("philotes_cdc_events_error_total", 1.0)] {
        let promql = format!(r#"sum({metric}{{{selector},table="public.orders"}})"#);
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while single_value(&prometheus.query(&promql).await) != Some(want) {
                flusher.assert_running();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        if seen.is_err() {
            let series = prometheus.query(&format!(r#"{{__name__=~"{metric}|up"}}"#)).await;
            let mut exposed = Vec::new();
            for addr in [&capture_addr, &flusher_addr] {
                exposed.extend(http_get(addr, "/metrics").await.lines().filter(|l| l.starts_with(metric)).map(str::to_string));
            }
            panic!(
                "{promql} is not {want} in Prometheus after 60 s; it has {series:?}; philotes exposes {exposed:?}\n\
                 Prometheus' log:\n{}",
                prometheus.log()
            );
        }
    }
    // Both processes are scraped, under the roles of the scrape config.
    let up = prometheus.query(r#"up{job="philotes"} == 1"#).await;
    let roles: BTreeSet<&str> = up.iter().filter_map(|s| s["metric"]["role"].as_str()).collect();
    assert_eq!(roles, BTreeSet::from(["capture", "flusher"]), "both targets up: {up:?}");

    // Every metric the dashboard, the alerts and the KEDA trigger name is exported (by one of the roles; gauges
    // of the status poller within its 5 s period).
    let queries = queries();
    let wanted: BTreeSet<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
    assert!(wanted.contains("philotes_cdc_events_processed_total") && wanted.len() >= 10, "{wanted:?}");
    let missing = || async {
        let exposed: BTreeSet<String> = exposed_names(&http_get(&capture_addr, "/metrics").await)
            .union(&exposed_names(&http_get(&flusher_addr, "/metrics").await))
            .cloned()
            .collect();
        wanted.difference(&exposed).cloned().collect::<Vec<_>>()
    };
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if missing().await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "queried by deploy/ but not in philotes' /metrics: {:?}", missing().await);

    // Every query is valid PromQL for this Prometheus (Grafana's variables filled in as Grafana would), and the
    // dashboard's and the trigger's queries have data for this pipeline.
    for (whence, query) in &queries {
        let promql = query
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$pipeline", &pipeline.name)
            .replace(r#"pipeline="orders""#, &format!(r#"pipeline="{}""#, pipeline.name));
        if let Some(label) = promql.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
            let (metric, label) = label.split_once(", ").expect("label_values(metric, label)");
            let values = prometheus.api(&format!("label/{label}/values?match[]={}", encode(metric))).await;
            assert!(values.as_array().is_some_and(|v| v.iter().any(|v| v == &pipeline.name)), "{whence}: {values}");
            continue;
        }
        // `query` fails the test on invalid PromQL. Alerts have no data on a healthy pipeline, quantiles and means
        // of a histogram without new observations are NaN; the rest has data once a rate has its two samples.
        let result = prometheus.query(&promql).await;
        if result.is_empty() && !whence.starts_with("alert") && !promql.contains("histogram_quantile") && !promql.contains("_sum") {
            let what = format!("data for {whence}: {promql}");
            wait_for(&what, Duration::from_secs(15), || async { !prometheus.query(&promql).await.is_empty() }).await;
        }
    }
    // The alert rules loaded and evaluate without error; the dead letter fires its alert (for its table), and
    // nothing else fires or is pending on this otherwise healthy pipeline.
    let rules = || async {
        let data = prometheus.api("rules").await;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect::<Vec<Value>>()
    };
    let dead_letters_alert = |rules: &[Value]| {
        rules.iter().find(|r| r["name"] == "PhilotesDeadLetters").and_then(|r| r["alerts"].as_array().cloned()).unwrap_or_default()
    };
    wait_for("the PhilotesDeadLetters alert", Duration::from_secs(30), || async { !dead_letters_alert(&rules().await).is_empty() }).await;
    let rules = rules().await;
    assert_eq!(rules.len(), queries.iter().filter(|(w, _)| w.starts_with("alert")).count(), "every rule loaded");
    let alert = &dead_letters_alert(&rules)[0];
    assert_eq!((&alert["state"], &alert["labels"]["table"]), (&Value::from("firing"), &Value::from("public.orders")), "{alert}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let alerts = rule["alerts"].as_array().is_some_and(|a| !a.is_empty());
        assert!(rule["name"] == "PhilotesDeadLetters" || !alerts, "{} fires on a healthy pipeline: {rule}", rule["name"]);
    }

    flusher.stop_cleanly().await;
    capture.stop_cleanly().await;
}
