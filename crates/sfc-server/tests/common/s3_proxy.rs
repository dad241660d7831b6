//! A transparent HTTP/1.1 proxy on 127.0.0.1 in front of an S3 server that can lose
//! answers: the request reaches the server and takes effect, but the client sees its
//! connection close instead of the response (what a network failure after the server
//! acted looks like).
//!
//! Each request goes upstream on a fresh connection with `Connection: close`, so the
//! response needs no parsing: it is whatever upstream sends until it closes. The request
//! is forwarded unchanged otherwise, `Host` included: the client signs it (SigV4) and
//! SeaweedFS checks it (a rewritten `Host` gets 403 SignatureDoesNotMatch). `object_store` sends every body with a `Content-Length` (a payload's
//! length is set explicitly); a chunked body is recorded as a problem, not forwarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The proxy; it stops accepting connections when dropped.
pub struct AnswerLosingProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    /// Whose answers are lost, when armed.
    armed: Mutex<Option<Lost>>,
    lost: AtomicUsize,
    /// Requests answered here with an S3 error, not forwarded.
    canned: Mutex<Vec<Canned>>,
    answered: AtomicUsize,
    /// `METHOD target` of every request received, in order.
    seen: Mutex<Vec<String>>,
    problems: Mutex<Vec<String>>,
    closed: AtomicBool,
    /// Work to do once, before forwarding the first request that matches.
    before: Mutex<Vec<Before>>,
}

/// [`AnswerLosingProxy::before_forwarding`]: `work` runs before the first request with
/// this method whose target contains `target` goes upstream.
struct Before {
    method: &'static str,
    target: String,
    work: Box<dyn FnOnce() + Send>,
}

/// Which requests lose their answers: those of objects whose URL path (`/bucket/key`)
/// starts with the string held (the key of an upload is not known before it is made).
#[derive(Clone, Debug)]
enum Lost {
    /// Plain `PUT`s: the object sent whole, not a part nor a server-side copy.
    PlainPuts(String),
    /// `POST`s completing a multipart upload (`?uploadId=…`).
    Completions(String),
}

/// Requests the proxy answers itself with an S3 error: those with this method whose
/// target (`/bucket/key?query`) contains `target`.
#[derive(Clone, Debug)]
struct Canned {
    method: &'static str,
    target: String,
    status: &'static str,
    code: &'static str,
}

/// The head of a request: its request line and headers, as received.
struct Head {
    method: String,
    target: String,
    /// `(name, value)` lines in their order, names as sent.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl AnswerLosingProxy {
    /// Starts the proxy in front of `upstream` (an `http://127.0.0.1:PORT` endpoint).
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("not an http://IP:PORT endpoint: {upstream}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            armed: Mutex::new(None),
            lost: AtomicUsize::new(0),
            canned: Mutex::new(Vec::new()),
            answered: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            before: Mutex::new(Vec::new()),
        });
        super::accept_each(
            listener,
            Arc::clone(&state),
            |state| state.closed.load(Ordering::SeqCst),
            |state, client| {
                if let Err(error) = serve(state, client) {
                    state.problem(format!("proxying: {error}"));
                }
            },
        );
        AnswerLosingProxy { addr, state }
    }

    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, every `PUT` of a path starting with `path` (`/bucket/key…`, no query)
    /// without an `x-amz-copy-source` header reaches upstream but loses its answer: a
    /// plain upload of an object, not a part of a multipart upload nor a server-side copy.
    pub fn lose_answers_to_plain_puts(&self, path: &str) {
        *self.state.armed.lock().unwrap() = Some(Lost::PlainPuts(path.to_owned()));
    }

    /// From now on, every `POST` completing a multipart upload of a path starting with
    /// `path` (`/bucket/key…`) reaches upstream but loses its answer.
    pub fn lose_answers_to_completions(&self, path: &str) {
        *self.state.armed.lock().unwrap() = Some(Lost::Completions(path.to_owned()));
    }

    /// From now on, aborts of multipart uploads get `404 NoSuchUpload` from the proxy
    /// (as from S3 for an upload that completed; SeaweedFS accepts them).
    pub fn answer_aborts_with_no_such_upload(&self) {
        self.answer("DELETE", "?uploadId=", "404 Not Found", "NoSuchUpload");
    }

    /// From now on, aborts of multipart uploads get `403 AccessDenied` from the proxy
    /// (a role without `s3:AbortMultipartUpload`).
    pub fn deny_aborts(&self) {
        self.answer("DELETE", "?uploadId=", "403 Forbidden", "AccessDenied");
    }

    /// From now on, writes (`PUT`) of objects whose target contains `target` get `403
    /// AccessDenied` from the proxy.
    pub fn deny_writes(&self, target: &str) {
        self.answer("PUT", target, "403 Forbidden", "AccessDenied");
    }

    /// `METHOD target` of every request received so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }

    /// From now on, reads (`GET`) of objects whose target contains `target` get `403
    /// AccessDenied` from the proxy (a role that may not read them).
    pub fn deny_reads(&self, target: &str) {
        self.answer("GET", target, "403 Forbidden", "AccessDenied");
    }

    /// From now on, reads (`GET`) of objects whose target contains `target` get `404
    /// NoSuchKey` from the proxy (as when another client deleted them first).
    pub fn answer_reads_with_not_found(&self, target: &str) {
        self.answer("GET", target, "404 Not Found", "NoSuchKey");
    }

    fn answer(&self, method: &'static str, target: &str, status: &'static str, code: &'static str) {
        self.state.canned.lock().unwrap().push(Canned {
            method,
            target: target.to_owned(),
            status,
            code,
        });
    }

    /// Runs `work` (on the proxy's thread) just before the first request with `method`
    /// whose target contains `target` is forwarded: something another client does
    /// between two requests of the one under test.
    pub fn before_forwarding(
        &self,
        method: &'static str,
        target: &str,
        work: impl FnOnce() + Send + 'static,
    ) {
        self.state.before.lock().unwrap().push(Before {
            method,
            target: target.to_owned(),
            work: Box::new(work),
        });
    }

    /// Requests are forwarded again, none answered by the proxy.
    pub fn stop_answering(&self) {
        self.state.canned.lock().unwrap().clear();
    }

    /// How many requests the proxy answered itself.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Answers go through again.
    pub fn disarm(&self) {
        *self.state.armed.lock().unwrap() = None;
    }

    /// How many answers were lost so far.
    pub fn answers_lost(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// What went wrong while proxying (a request it could not forward, …).
    pub fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }
}

impl Drop for AnswerLosingProxy {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

impl State {
    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }

    fn loses_answer_to(&self, head: &Head) -> bool {
        match &*self.armed.lock().unwrap() {
            None => false,
            Some(Lost::PlainPuts(path)) => {
                head.target.starts_with(path.as_str())
                    && !head.target.contains('?')
                    && head.method == "PUT"
                    && head.header("x-amz-copy-source").is_none()
            }
            Some(Lost::Completions(path)) => {
                head.method == "POST"
                    && head.target.starts_with(path.as_str())
                    && head
                        .target
                        .split_once('?')
                        .is_some_and(|(_, query)| query.starts_with("uploadId="))
            }
        }
    }
}

/// Proxies the requests of one client connection until it closes.
fn serve(state: &State, client: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    while let Some(head) = read_head(&mut reader)? {
        if head.header("transfer-encoding").is_some() {
            state.problem(format!(
                "{} {}: a chunked request body (not supported)",
                head.method, head.target
            ));
            return Ok(());
        }
        let length: usize = match head.header("content-length") {
            Some(value) => value.trim().parse().map_err(std::io::Error::other)?,
            None => 0,
        };
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        state
            .seen
            .lock()
            .unwrap()
            .push(format!("{} {}", head.method, head.target));

        let canned = state
            .canned
            .lock()
            .unwrap()
            .iter()
            .find(|c| head.method == c.method && head.target.contains(c.target.as_str()))
            .cloned();
        if let Some(Canned { status, code, .. }) = canned {
            state.answered.fetch_add(1, Ordering::SeqCst);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>answered by the test proxy</Message></Error>"
            );
            write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        let before = {
            let mut waiting = state.before.lock().unwrap();
            let found = waiting
                .iter()
                .position(|b| head.method == b.method && head.target.contains(b.target.as_str()));
            found.map(|at| waiting.remove(at))
        };
        if let Some(before) = before {
            (before.work)();
        }
        let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
        for (name, value) in &head.headers {
            if !name.eq_ignore_ascii_case("connection") {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        // Upstream closes after its response: its end is the end of the response.
        request.push_str("Connection: close\r\n\r\n");
        let mut upstream = TcpStream::connect(state.upstream)?;
        upstream.set_read_timeout(Some(Duration::from_secs(60)))?;
        upstream.write_all(request.as_bytes())?;
        upstream.write_all(&body)?;
        let mut response = Vec::new();
        upstream.read_to_end(&mut response)?;

        if state.loses_answer_to(&head) {
            state.lost.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        client.write_all(&response)?;
    }
    Ok(())
}

/// The next request head, or `None` when the client closed the connection between
/// requests.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(std::io::Error::other(format!("bad request line {line:?}")));
    };
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: Vec::new(),
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other(
                "connection closed inside a request head",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(Some(head));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(std::io::Error::other(format!("bad header line {line:?}")));
        };
        head.headers
            .push((name.to_owned(), value.trim().to_owned()));
    }
}
