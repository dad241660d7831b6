//! A throwaway PostgreSQL cluster for tests, from Debian's packages
//! (`apt-get install postgresql`): `initdb` in a temporary folder, the server on a free
//! port on 127.0.0.1 only, its unix socket inside the folder. Run as the `postgres` user
//! when the tests run as root (initdb and pg_ctl refuse root).
//!
//! One cluster is shared by the tests of a test binary ([`shared`]), each test taking a
//! fresh database ([`PgCluster::create_database`]); a test that stops and starts
//! PostgreSQL owns its cluster ([`PgCluster::start`]), stopped by `Drop`, also on panic.
//! Every cluster has a watchdog process holding the read end of a pipe whose write end
//! this process holds: when the test binary exits, however it exits (statics are never
//! dropped), the watchdog stops the cluster and removes its folder.
//!
//! The cluster trades durability for speed (`fsync=off`): it survives process restarts,
//! which the tests do, not power loss, which they do not.
//!
//! PostgreSQL missing: with `CI` set the tests fail (".ci/run installs it"); otherwise
//! they print how to get it and return early ([`available`]).

use sfc_server::config::{Database, PostgresUrl};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role the servers log in as (password authentication over TCP, as in production).
pub const USER: &str = "sfc";
/// Its password (a throwaway cluster on 127.0.0.1).
pub const PASSWORD: &str = "sfc-test-password";

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether PostgreSQL is installed. Without it: a failure when `CI` is set (the test
/// must run there), else a note on how to get it and `false` (the caller returns).
pub fn available(test: &str) -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL not found under /usr/lib/postgresql/*/bin: .ci/run installs it (apt-get install postgresql)");
    }
    eprintln!(
        "{test}: skipped: PostgreSQL not found under /usr/lib/postgresql/*/bin \
         (install it with `apt-get install postgresql`; CI runs these tests)"
    );
    false
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL cluster in a temporary folder.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// Stops the cluster when this process ends (its stdin is our pipe).
    watchdog: Option<(Child, ChildStdin)>,
    databases: AtomicUsize,
}

impl PgCluster {
    /// Creates and starts a cluster (panics with PostgreSQL's log if it cannot).
    pub fn start() -> Self {
        let bin = bin_dir().expect("PostgreSQL is installed (check `available` first)");
        let as_postgres = running_as_root();
        // In /tmp whatever TMPDIR says: the postgres user must be able to reach it, and
        // the socket path (folder + "/.s.PGSQL.<port>") must stay under 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("sfc-pg-")
            .tempdir_in("/tmp")
            .expect("a temporary folder");
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", &path_str(dir.path())])
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            watchdog: None,
            databases: AtomicUsize::new(0),
        };
        cluster.watchdog = Some(cluster.spawn_watchdog());
        let pwfile = cluster.dir.path().join("pw");
        std::fs::write(&pwfile, "postgres-test-password\n").unwrap();
        if as_postgres {
            Command::new("chown")
                .args(["postgres:postgres", &path_str(&pwfile)])
                .status()
                .unwrap();
        }
        let output = cluster
            .command("initdb")
            .args(["-D", &path_str(&cluster.data())])
            .args(["-U", "postgres", "--pwfile", &path_str(&pwfile)])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The free port may be taken by someone else before PostgreSQL binds it.
        let mut attempts = 0;
        while let Err(error) = cluster.try_start() {
            attempts += 1;
            assert!(attempts < 3, "{error}");
            cluster.port = free_port();
        }
        cluster.psql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// `program` from PostgreSQL's bin folder, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        // The postgres user may not be allowed into the test's working folder.
        command.current_dir(self.dir.path());
        command
    }

    fn pg_ctl_stop(&self, mode: &str) -> String {
        let mut words = vec![
            path_str(&self.bin.join("pg_ctl")),
            "-D".into(),
            path_str(&self.data()),
            "-m".into(),
            mode.into(),
            "-w".into(),
            "stop".into(),
        ];
        if self.as_postgres {
            words.splice(0..0, ["runuser", "-u", "postgres", "--"].map(String::from));
        }
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn spawn_watchdog(&self) -> (Child, ChildStdin) {
        let script = format!(
            "cd /; cat >/dev/null; {} >/dev/null 2>&1; rm -rf {}",
            self.pg_ctl_stop("immediate"),
            shell_quote(&path_str(self.dir.path()))
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster's watchdog");
        let stdin = child.stdin.take().expect("piped stdin");
        (child, stdin)
    }

    /// Starts (or restarts) the server on the same port and data.
    pub fn start_again(&self) {
        if let Err(error) = self.try_start() {
            panic!("{error}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off \
             -c max_connections=300",
            self.port,
            path_str(self.dir.path())
        );
        let output = self
            .command("pg_ctl")
            .args(["-D", &path_str(&self.data())])
            .args(["-l", &path_str(&self.log())])
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run pg_ctl");
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        ))
    }

    /// Stops the server (`fast`: sessions are ended, nothing committed is lost).
    pub fn stop(&self) {
        let output = self
            .command("pg_ctl")
            .args(["-D", &path_str(&self.data()), "-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run pg_ctl stop");
        assert!(
            output.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs SQL as the superuser over the unix socket; returns psql's output (unaligned,
    /// tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self
            .psql_command(database)
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// An interactive psql as the superuser (unaligned, tuples only), its input and
    /// output piped: for a test that holds a transaction open while other work runs.
    /// The caller ends it (closing its input ends psql) and waits for it.
    pub fn psql_session(&self, database: &str) -> std::process::Child {
        self.psql_command(database)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run psql")
    }

    /// psql as the superuser over the unix socket, on `database`: unaligned, tuples only,
    /// stopping at the first error.
    fn psql_command(&self, database: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &path_str(self.dir.path())])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ]);
        command
    }

    /// A new empty database owned by [`USER`]; returns its name.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("sfc_test_{n}");
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {USER} ENCODING 'UTF8'"),
        );
        name
    }

    /// The URL a server uses for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A fresh database as the server's [`Database`] setting.
    pub fn fresh(&self) -> Database {
        let url = self.url(&self.create_database());
        Database::Postgres(Box::new(PostgresUrl::parse(&url).unwrap()))
    }

    /// Waits until the server accepts connections again (after [`Self::start_again`]).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("PostgreSQL did not come back");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &path_str(&self.data()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The cluster this test binary shares (started on first use), or `None` when
/// PostgreSQL is not installed and `CI` is not set (see [`available`]).
pub fn shared(test: &str) -> Option<&'static PgCluster> {
    static SHARED: OnceLock<Mutex<Option<&'static PgCluster>>> = OnceLock::new();
    if !available(test) {
        return None;
    }
    let slot = SHARED.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        // Leaked on purpose: statics are never dropped; the watchdog stops it at exit.
        *slot = Some(Box::leak(Box::new(PgCluster::start())));
    }
    *slot
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
