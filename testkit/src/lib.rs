//! Throwaway PostgreSQL clusters for philotes' tests, benchmarks and the quick start.
//!
//! Tests never need a server started by hand: [`shared`] starts one cluster per test run (under cargo-nextest,
//! which runs each test in its own process, every process of one run shares it; under `cargo test`, one per test
//! binary), and [`Cluster::database`] hands each test its own fresh database, dropped afterwards.
//!
//! The facts this follows are in `shared/notes/replication.md`: the server refuses to run as root, so as root the
//! cluster runs as an unprivileged system user through `setpriv`; settings go into an included file (not the
//! `pg_ctl` command line) so that `ALTER SYSTEM` still works in tests.
//!
//! Cleanup does not rely on destructors (a panicking or killed test runs none): a detached *guardian* process
//! waits for the owner of the cluster (the test binary, or the nextest runner) to exit, then stops the server
//! and removes its directory.

use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The system user the server runs as when the harness itself runs as root.
pub const SERVER_USER: &str = "philotes-pg";

/// What can go wrong while starting or using a throwaway cluster. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The PostgreSQL server programs (initdb, pg_ctl) are not installed where we look.
    #[error("PostgreSQL server programs not found (looked in $PG_BIN and /usr/lib/postgresql/*/bin): install Debian's `postgresql` package or set PG_BIN")]
    ServerNotInstalled,
    /// A program we ran failed; its output is kept because it is the only useful clue.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stdout and stderr.
        output: String,
    },
    /// Filesystem or process-spawn trouble.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server did not accept connections in time.
    #[error("the server in {dir} did not become ready within {seconds} s; its log says:\n{log}")]
    NotReady {
        /// The cluster directory.
        dir: String,
        /// How long we waited.
        seconds: u64,
        /// The tail of the server log.
        log: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory that holds the data directory, the log and the socket. Keep it short: the Unix socket path
    /// inside it must stay under 107 bytes.
    pub base: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// When set, a guardian stops the server and deletes `base` once this process id has exited.
    pub owner_pid: Option<u32>,
    /// Extra lines for the included settings file (e.g. `max_slot_wal_keep_size = '64MB'`).
    pub extra_settings: Vec<String>,
}

/// A running PostgreSQL cluster listening on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Cluster {
    base: PathBuf,
    port: u16,
    bin: PathBuf,
    run_as: Option<String>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static DATABASE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cluster shared by every test of this run, started on first use.
///
/// Panics with the reason when no cluster can be started: a missing service fails the run, it never skips.
pub fn shared() -> &'static Cluster {
    let result = SHARED.get_or_init(|| Cluster::start_shared().map_err(|e| e.to_string()));
    match result {
        Ok(cluster) => cluster,
        Err(reason) => panic!("could not start the test PostgreSQL cluster: {reason}"),
    }
}

impl Cluster {
    /// Starts (or joins) the cluster of this test run. Under nextest every test is its own process, so the
    /// processes of one run (same `NEXTEST_RUN_ID`) meet through a lock file and share one cluster, which the
    /// runner's exit tears down; otherwise the cluster belongs to this process.
    fn start_shared() -> Result<Cluster, HarnessError> {
        let root = std::env::var_os("PHILOTES_TEST_PG_ROOT").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let (key, owner) = match std::env::var("NEXTEST_RUN_ID") {
            Ok(run) => (run.chars().filter(char::is_ascii_alphanumeric).take(12).collect(), std::os::unix::process::parent_id()),
            Err(_) => (format!("p{}", std::process::id()), std::process::id()),
        };
        let base = root.join(format!("philotes-pg-{key}"));
        let lock_path = root.join(format!("philotes-pg-{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_err(format!("creating {}", lock_path.display())))?;
        lock.lock().map_err(io_err("locking the cluster lock file"))?;
        let ready = base.join("ready");
        if let Ok(port) = fs::read_to_string(&ready) {
            if let Ok(port) = port.trim().parse::<u16>() {
                let cluster = Cluster { base: base.clone(), port, bin: find_bin()?, run_as: server_user()? };
                if cluster.is_ready() {
                    return Ok(cluster);
                }
            }
        }
        let cluster = Cluster::start(&ClusterOptions {
            base: base.clone(),
            port: None,
            owner_pid: Some(owner),
            extra_settings: Vec::new(),
        })?;
        // The guardian removes the lock file with the cluster.
        let _ = fs::write(base.join("lockfile"), lock_path.to_string_lossy().as_bytes());
        fs::write(&ready, cluster.port.to_string()).map_err(io_err("writing the ready file"))?;
        Ok(cluster)
    }

    /// Creates (initdb) and starts a cluster in `options.base`, or starts the one already there.
    pub fn start(options: &ClusterOptions) -> Result<Cluster, HarnessError> {
        let bin = find_bin()?;
        let run_as = server_user()?;
        if let Some(user) = &run_as {
            ensure_user(user)?;
        }
        let base = options.base.clone();
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let data = base.join("data");
        let fresh = !data.join("PG_VERSION").exists();
        if fresh {
            fs::create_dir_all(&data).map_err(io_err("creating the data directory"))?;
            set_mode(&base, 0o755)?;
            set_mode(&data, 0o700)?;
        }
        if let Some(user) = &run_as {
            run(Command::new("chown").arg("-R").arg(format!("{user}:{user}")).arg(&base))?;
        }
        let mut cluster = Cluster { base: base.clone(), port: 0, bin, run_as };
        if fresh {
            run(cluster
                .server_command("initdb")
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]))?;
            let conf = data.join("postgresql.conf");
            let mut file = fs::OpenOptions::new().append(true).open(&conf).map_err(io_err("opening postgresql.conf"))?;
            writeln!(file, "\ninclude_if_exists = 'philotes.conf'").map_err(io_err("writing postgresql.conf"))?;
        }
        if !fresh && cluster.server_command("pg_ctl").arg("-D").arg(&data).arg("status").output().is_ok_and(|o| o.status.success()) {
            // Already running (a second `philotes-pg start`): keep it, on the port it was started with.
            cluster.port = read_port(&data).unwrap_or_default();
            return Ok(cluster);
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            cluster.port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            cluster.write_settings(&options.extra_settings)?;
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                // A free port can be taken between our probe and the server's bind: try another.
                Err(e) if attempts < 3 && options.port.is_none() => eprintln!("retrying cluster start: {e}"),
                Err(e) => return Err(e),
            }
        }
        if let Some(owner) = options.owner_pid {
            cluster.spawn_guardian(owner)?;
        }
        Ok(cluster)
    }

    /// Stops the server (fast shutdown). The directory stays; [`Cluster::start`] on it starts it again.
    pub fn stop(&self) -> Result<(), HarnessError> {
        run(self.server_command("pg_ctl").arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "stop"])).map(|_| ())
    }

    /// Opens an existing, running cluster directory (written by [`Cluster::start`]) by its port.
    pub fn attach(base: &Path, port: u16) -> Result<Cluster, HarnessError> {
        Ok(Cluster { base: base.to_path_buf(), port, bin: find_bin()?, run_as: server_user()? })
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// A connection URL for `database` as the superuser `postgres` (trust auth, loopback only).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a fresh, empty database for one test; it is dropped (with its replication slots) when the
    /// returned guard is dropped.
    pub fn database(&self, hint: &str) -> Result<TestDatabase, HarnessError> {
        let clean: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(30)
            .collect();
        let n = DATABASE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{clean}_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(TestDatabase { cluster: self.clone(), name })
    }

    /// Runs SQL through `psql` (synchronously: usable in `Drop` and outside a runtime) and returns its
    /// unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, HarnessError> {
        let out = run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Replaces `pg_hba.conf` with `text` and reloads the server (e.g. `hostssl` lines only, for TLS tests).
    pub fn set_hba(&self, text: &str) -> Result<(), HarnessError> {
        let path = self.data_dir().join("pg_hba.conf");
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        set_mode(&path, 0o644)?;
        run(self.server_command("pg_ctl").arg("-D").arg(self.data_dir()).arg("reload")).map(|_| ())
    }

    /// Whether the server accepts connections now.
    pub fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--reset-env", "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn write_settings(&self, extra: &[String]) -> Result<(), HarnessError> {
        let mut text = format!(
            "# Written by philotes-testkit; ALTER SYSTEM still overrides these.\n\
             listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 32\nmax_wal_senders = 32\nmax_connections = 200\n\
             fsync = off\nfull_page_writes = off\n",
            self.port,
            self.base.display()
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        let path = self.data_dir().join("philotes.conf");
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        set_mode(&path, 0o644)
    }

    fn pg_ctl_start(&self) -> Result<(), HarnessError> {
        let log = self.base.join("server.log");
        let started = Instant::now();
        let result = run(self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null()));
        if let Err(e) = result {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(HarnessError::NotReady {
                dir: self.base.display().to_string(),
                seconds: started.elapsed().as_secs(),
                log: format!("{e}\n{tail}"),
            });
        }
        Ok(())
    }

    /// Starts a detached process (its own session, so a test runner killing our process group does not take
    /// it along) that waits for `owner` to exit, then stops the server and deletes the cluster directory.
    fn spawn_guardian(&self, owner: u32) -> Result<(), HarnessError> {
        let stop = match &self.run_as {
            Some(user) => format!("setpriv --reuid {user} --regid {user} --init-groups --reset-env -- "),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 {owner} 2>/dev/null; do sleep 1; done; \
             {stop}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; \
             lock=$(cat '{base}/lockfile' 2>/dev/null); rm -rf '{base}'; [ -n \"$lock\" ] && rm -f \"$lock\"",
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir().display(),
            base = self.base.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("spawning the cluster guardian"))?;
        Ok(())
    }
}

/// One test's own database on a shared cluster. Dropping it terminates its sessions, drops its replication
/// slots and drops the database.
#[derive(Debug)]
pub struct TestDatabase {
    cluster: Cluster,
    name: String,
}

impl TestDatabase {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL as the superuser.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// The cluster it lives on.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Runs SQL synchronously through psql (handy for setup and for checks outside async code).
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        self.cluster.psql(&self.name, sql)
    }

    /// Opens a tokio-postgres connection (its connection task is spawned on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = &self.name;
        // Separate psql calls: DROP DATABASE may not share a (psql -c implicit) transaction with anything.
        let steps = [
            format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"),
            format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active"),
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        ];
        let mut last_error = None;
        // Slots held by a walsender that is still exiting are dropped on a later try.
        for _ in 0..20 {
            match steps.iter().try_for_each(|sql| self.cluster.psql("postgres", sql).map(|_| ())) {
                Ok(()) => return,
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let reason = last_error.map(|e| e.to_string()).unwrap_or_default();
        eprintln!("warning: could not drop test database {name}: {reason}");
    }
}

/// The port a cluster directory was last started with (from the settings file the harness writes).
pub fn read_port(data_dir: &Path) -> Option<u16> {
    let text = fs::read_to_string(data_dir.join("philotes.conf")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("port = ").and_then(|p| p.trim().parse().ok()))
}

/// Where the server programs are: `$PG_BIN`, else the newest `/usr/lib/postgresql/<major>/bin`.
pub fn find_bin() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).ok_or(HarnessError::ServerNotInstalled)
}

/// `Some(SERVER_USER)` when we run as root (the server refuses root), else `None`.
fn server_user() -> Result<Option<String>, HarnessError> {
    let status = fs::read_to_string("/proc/self/status").map_err(io_err("reading /proc/self/status"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or("");
    Ok((euid == "0").then(|| SERVER_USER.to_string()))
}

fn ensure_user(user: &str) -> Result<(), HarnessError> {
    let exists = Command::new("id").arg("-u").arg(user).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if exists.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let out = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
        .output()
        .map_err(io_err("running useradd"))?;
    // Exit code 9: another process created it a moment ago.
    if out.status.success() || out.status.code() == Some(9) {
        return Ok(());
    }
    Err(command_failed("useradd", &out))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(format!("chmod {}", path.display())))
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    let port = listener.local_addr().map_err(io_err("finding a free port"))?.port();
    Ok(port)
}

fn run(cmd: &mut Command) -> Result<Output, HarnessError> {
    let line = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(io_err(format!("running {line}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_failed(&line, &out))
    }
}

fn command_failed(command: &str, out: &Output) -> HarnessError {
    HarnessError::CommandFailed {
        command: command.to_string(),
        status: out.status.to_string(),
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    }
}
