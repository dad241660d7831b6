//! A TCP relay on 127.0.0.1 in front of a server (PostgreSQL) that can lose one answer:
//! when armed with a byte pattern, the first chunk from the server containing it is not
//! forwarded and the client's connection is closed instead. The server has acted (for
//! PostgreSQL: the statement ran and its implicit transaction committed before the
//! answer was sent); the client sees its connection close, as after a network failure.
//! It can lose a request the same way ([`CuttingRelay::cut_request_at`]): the server
//! never gets it, and sees its connection close.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The relay; it stops accepting connections when dropped.
pub struct CuttingRelay {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    /// The pattern whose answer is lost next, when armed.
    armed: Mutex<Option<Vec<u8>>>,
    /// The pattern whose request is lost next, when armed.
    armed_request: Mutex<Option<Vec<u8>>>,
    /// A lost request leaves the server's connection open (its client vanished).
    strand: AtomicBool,
    /// A lost request freezes its connection instead: nothing more is relayed on it
    /// either way, and both ends stay open.
    freeze: AtomicBool,
    cuts: AtomicUsize,
    closed: AtomicBool,
    /// The client side of every connection relayed so far, for [`CuttingRelay::cut_now`].
    clients: Mutex<Vec<TcpStream>>,
}

impl CuttingRelay {
    /// Starts the relay in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            armed: Mutex::new(None),
            armed_request: Mutex::new(None),
            strand: AtomicBool::new(false),
            freeze: AtomicBool::new(false),
            cuts: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
        });
        super::accept_each(
            listener,
            Arc::clone(&state),
            |state| state.closed.load(Ordering::SeqCst),
            relay,
        );
        CuttingRelay { addr, state }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next chunk from the server that contains `pattern` is lost, and its
    /// connection closed.
    pub fn cut_at(&self, pattern: &[u8]) {
        *self.state.armed.lock().unwrap() = Some(pattern.to_vec());
    }

    /// The next chunk from the client that contains `pattern` is lost, and its
    /// connection closed.
    pub fn cut_request_at(&self, pattern: &[u8]) {
        self.state.strand.store(false, Ordering::SeqCst);
        self.state.freeze.store(false, Ordering::SeqCst);
        *self.state.armed_request.lock().unwrap() = Some(pattern.to_vec());
    }

    /// The next chunk from the client that contains `pattern` is lost, and its connection
    /// then relays nothing more either way while both ends stay open: a stuck proxy, or a
    /// path whose far end's kernel still acknowledges what nothing reads.
    pub fn freeze_request_at(&self, pattern: &[u8]) {
        self.state.strand.store(false, Ordering::SeqCst);
        self.state.freeze.store(true, Ordering::SeqCst);
        *self.state.armed_request.lock().unwrap() = Some(pattern.to_vec());
    }

    /// As [`Self::cut_request_at`], but the server's side of the connection stays open,
    /// as when the client's host vanished (the server finds out by its own time-outs).
    pub fn strand_request_at(&self, pattern: &[u8]) {
        self.state.strand.store(true, Ordering::SeqCst);
        self.state.freeze.store(false, Ordering::SeqCst);
        *self.state.armed_request.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Closes every connection relayed so far, now, whatever it is doing (a statement
    /// waiting for a lock, say): the client sees it close; the server sees its end
    /// close only when it next reads from it.
    pub fn cut_now(&self) {
        for client in self.state.clients.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
        }
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Relays one connection both ways until either side closes or the answer is cut.
fn relay(state: &State, client: TcpStream) {
    let Ok(server) = TcpStream::connect(state.upstream) else {
        return;
    };
    let (Ok(client_reader), Ok(mut server_writer)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    if let Ok(kept) = client.try_clone() {
        state.clients.lock().unwrap().push(kept);
    }
    let frozen = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let cut = forward(
                state,
                &state.armed_request,
                client_reader,
                &mut server_writer,
                &frozen,
            );
            // Both ways, unless stranded: a cut request closes the client's connection too.
            if !(cut && state.strand.load(Ordering::SeqCst)) {
                let _ = server_writer.shutdown(Shutdown::Both);
            }
        });
        let mut client = client;
        forward(state, &state.armed, server, &mut client, &frozen);
        // Frozen, the client's end stays open whatever the server did, until the client
        // closes it (the other thread then sees the end).
        if !frozen.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
        }
    });
}

/// Copies `from` to `to` until either closes or a chunk contains the pattern `armed`
/// holds (that chunk is dropped, the pattern disarmed, the cut counted); then closes
/// `from` both ways. True if it was cut.
fn forward(
    state: &State,
    armed: &Mutex<Option<Vec<u8>>>,
    mut from: TcpStream,
    to: &mut TcpStream,
    frozen: &AtomicBool,
) -> bool {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Frozen: taken in and dropped, until an end closes.
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        let chunk = &buf[..n];
        let mut pattern = armed.lock().unwrap();
        let cut = pattern
            .as_ref()
            .is_some_and(|pattern| chunk.windows(pattern.len()).any(|w| w == pattern));
        if cut && state.freeze.load(Ordering::SeqCst) {
            *pattern = None;
            state.cuts.fetch_add(1, Ordering::SeqCst);
            frozen.store(true, Ordering::SeqCst);
            continue;
        }
        if cut {
            *pattern = None;
            state.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = from.shutdown(Shutdown::Both);
            return true;
        }
        drop(pattern);
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    false
}
