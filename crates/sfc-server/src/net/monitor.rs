//! What the operator sees of a running server: the Prometheus metrics and the live state
//! (connections, uploads in progress, the last failures), fed by the socket layer from
//! what it already has in hand (accepts, decoded 828 headers, the conversation's
//! [`LogLine`]s). `session/` stays sans-IO: it only emits its log lines, as before.
//!
//! Memory is bounded: one entry per upload in progress (at most one per client, as in
//! the session's registry; stale ones are dropped after the upload timeout) and the last
//! [`FAILURES_KEPT`] failures (when full, the most listed kind makes room:
//! [`make_room`]).

use crate::admin::{FailureView, LiveView, UploadView};
use crate::session::{Cause, LogLine, RequestLog};
use crate::storage::setup::{SweepOutcome, Swept};
use crate::storage::Timestamp;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sfc_proto::{ClientId, FilePacketHeader, RequestCode, ResponseCode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How many failures the dashboard and `/api/v1/failures` keep.
pub const FAILURES_KEPT: usize = 100;
/// Uploads in progress shown at most: an 828 header is noted before the session has
/// checked its client, so a flood of headers with made-up IDs must not grow the map
/// without bound (refused ones are dropped at their 1607, or when their connection ends
/// before it).
pub const LIVE_UPLOADS_KEPT: usize = 10_000;

type Labels = [(&'static str, String); 1];
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// A family's counters labelled `code`, each looked up in the family once, on first use
/// (so that `/metrics` lists only the codes seen), and kept: counting a request, once per
/// file packet, is then an atomic add, not a label allocation, a hash and a lock.
#[derive(Debug)]
struct ByCode<const N: usize> {
    family: Family<Labels, Counter>,
    /// The codes kept; any other code goes to the family each time.
    codes: [u16; N],
    counters: [OnceLock<Counter>; N],
}

impl<const N: usize> ByCode<N> {
    fn new(codes: [u16; N]) -> Self {
        ByCode {
            family: Family::default(),
            codes,
            counters: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn inc(&self, code: u16) {
        self.inc_by(code, 1);
    }

    /// Counts under the code's own label if it is one of the codes kept, else under
    /// `code="other"`: a code a client invents (one of 65,536) must not add a series
    /// to `/metrics` per value.
    fn inc_by(&self, code: u16, n: u64) {
        let kept = self.codes.iter().position(|&known| known == code);
        match kept.and_then(|i| self.counters.get(i)) {
            Some(slot) => slot
                .get_or_init(|| self.family.get_or_create(&code_label(code)).clone())
                .inc_by(n),
            None => self.family.get_or_create(&label("code", "other")).inc_by(n),
        };
    }
}

/// The reply code counted for a request answered with no reply.
const NO_REPLY: u16 = 0;

/// The `code` label: the code, or "none" for [`NO_REPLY`].
fn code_label(code: u16) -> Labels {
    if code == NO_REPLY {
        label("code", "none")
    } else {
        label("code", code)
    }
}

/// The content bytes of a file packet's log line (its payload less the fixed part).
fn packet_content(request: &RequestLog) -> u64 {
    request
        .payload
        .saturating_sub(sfc_proto::limits::FILE_PACKET_FIXED_LEN as u64)
}

/// The Prometheus metrics (see the server README for the list).
#[derive(Debug)]
struct Metrics {
    connections_open: Gauge,
    connections_accepted: Counter,
    connections_refused: Family<Labels, Counter>,
    requests: ByCode<7>,
    replies: ByCode<9>,
    bytes_received: Counter,
    uploads_in_progress: Gauge,
    upload_seconds: Histogram,
    upload_bytes: Histogram,
    checksum_failures: Family<Labels, Counter>,
    storage_seconds: HistogramFamily,
    storage_errors: ByCode<7>,
    rate_limit_refusals: Family<Labels, Counter>,
    admin_requests: Family<Labels, Counter>,
    admin_login_failures: Counter,
    store_sweeps: Family<Labels, Counter>,
    store_sweep_removed: Family<Labels, Counter>,
    store_sweep_left: Counter,
}

/// One upload in progress as the socket layer saw it.
#[derive(Debug, Clone)]
struct LiveUpload {
    peer: SocketAddr,
    file_name: String,
    packets_received: u16,
    total_packets: u16,
    bytes: u64,
    file_size: u32,
    started: Instant,
    updated: Instant,
}

#[derive(Debug, Default)]
struct Live {
    uploads: HashMap<ClientId, LiveUpload>,
    failures: VecDeque<FailureView>,
}

/// The metrics registry and the live state; one per server, shared by the listener, the
/// connections and the admin HTTP listener.
#[derive(Debug)]
pub struct Monitor {
    registry: Registry,
    metrics: Metrics,
    live: Mutex<Live>,
    upload_timeout: Duration,
}

fn label(key: &'static str, value: impl ToString) -> Labels {
    [(key, value.to_string())]
}

impl Metrics {
    /// Every metric at zero.
    fn new() -> Self {
        Metrics {
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            requests: ByCode::new(RequestCode::ALL.map(RequestCode::as_u16)),
            // Every reply code, then NO_REPLY.
            replies: ByCode::new(std::array::from_fn(|i| {
                ResponseCode::ALL
                    .get(i)
                    .map_or(NO_REPLY, |code| code.as_u16())
            })),
            bytes_received: Counter::default(),
            uploads_in_progress: Gauge::default(),
            // 1 ms .. ~4.8 h.
            upload_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 13)),
            // 1 KiB .. 4 GiB.
            upload_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 12)),
            checksum_failures: Family::default(),
            storage_seconds: Family::new_with_constructor(latency_histogram),
            storage_errors: ByCode::new(RequestCode::ALL.map(RequestCode::as_u16)),
            rate_limit_refusals: Family::default(),
            admin_requests: Family::default(),
            admin_login_failures: Counter::default(),
            store_sweeps: Family::default(),
            store_sweep_removed: Family::default(),
            store_sweep_left: Counter::default(),
        }
    }

    /// Registers every metric (the order is that of `/metrics`).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Protocol connections open",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Protocol connections accepted",
            self.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Protocol connections closed at once, by reason",
            self.connections_refused.clone(),
        );
        registry.register("requests", "Requests by code", self.requests.family.clone());
        registry.register(
            "replies",
            "Replies by code (none: no reply)",
            self.replies.family.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received on protocol connections",
            self.bytes_received.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Uploads begun and not yet finished",
            self.uploads_in_progress.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Time from an upload's first packet to its 1603",
            self.upload_seconds.clone(),
        );
        registry.register(
            "upload_size_bytes",
            "Plaintext size of the uploads finished",
            self.upload_bytes.clone(),
        );
        registry.register(
            "checksum_failures",
            "Checksum mismatches reported by clients (901: retry, 902: gave up)",
            self.checksum_failures.clone(),
        );
        registry.register(
            "storage_job_seconds",
            "Time of the storage jobs (database and files), by kind",
            self.storage_seconds.clone(),
        );
        registry.register(
            "storage_errors",
            "Requests refused with 1607 because storage failed, by request code",
            self.storage_errors.family.clone(),
        );
        registry.register(
            "rate_limit_refusals",
            "Refusals by the per-address rate limits, by limit",
            self.rate_limit_refusals.clone(),
        );
        registry.register(
            "admin_requests",
            "Admin HTTP responses by status",
            self.admin_requests.clone(),
        );
        registry.register(
            "admin_login_failures",
            "Failed admin logins (wrong token)",
            self.admin_login_failures.clone(),
        );
        registry.register(
            "store_sweeps",
            "Passes of the running clean-up of shared storage (--store-sweep-interval), by \
             outcome (limited: the database and the store not seen paired, or the clients \
             not read, so abandoned uploads and old backups only)",
            self.store_sweeps.clone(),
        );
        registry.register(
            "store_sweep_removed",
            "Removed by the running clean-up of shared storage, by kind (uploads: abandoned \
             uploads and old backups; unrecorded: objects no row names; replaced: versions \
             a later one replaced; recorded: overdue removals the database recorded)",
            self.store_sweep_removed.clone(),
        );
        registry.register(
            "store_sweep_left",
            "Removals of stored files the running clean-up of shared storage could not do \
             (failed; of recorded removals, also those not tried after several failures or \
             at the shutdown), tried again at a later pass",
            self.store_sweep_left.clone(),
        );
    }
}

/// Makes room in a full failure list for an entry of `kind`: the oldest entry of the
/// kind listed most often goes (the newcomer's own kind counted with it). Most failures
/// can be caused by anyone who can connect (refused connections, failed admin logins,
/// abandoned uploads), from as many addresses as they have; this way a flood of one kind
/// fills the list without pushing the other kinds off it.
fn make_room(failures: &mut VecDeque<FailureView>, kind: &str) {
    // Per kind listed: how many entries, and where its oldest is.
    let mut kinds: HashMap<&str, (usize, usize)> = HashMap::new();
    for (at, failure) in failures.iter().enumerate() {
        kinds.entry(failure.kind.as_str()).or_insert((0, at)).0 += 1;
    }
    if let Some((count, _)) = kinds.get_mut(kind) {
        *count += 1;
    }
    // The most listed kind; among equals, the one whose oldest entry is oldest (the
    // list's oldest when every kind is listed once, the newcomer's too).
    let at = kinds
        .values()
        .max_by_key(|(count, oldest)| (*count, std::cmp::Reverse(*oldest)))
        .map_or(0, |(_, oldest)| *oldest);
    failures.remove(at);
}

impl Monitor {
    /// A fresh registry; uploads idle for `upload_timeout` are no longer shown.
    pub fn new(upload_timeout: Duration) -> Self {
        let metrics = Metrics::new();
        let mut registry = Registry::with_prefix("sfc");
        metrics.register(&mut registry);
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Monitor {
            registry,
            metrics,
            live: Mutex::default(),
            upload_timeout,
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.sync_uploads(Instant::now());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn failure(
        &self,
        kind: &str,
        peer: Option<SocketAddr>,
        client: Option<ClientId>,
        detail: String,
    ) {
        let mut live = self.live();
        if live.failures.len() >= FAILURES_KEPT {
            make_room(&mut live.failures, kind);
        }
        live.failures.push_back(FailureView {
            at: Timestamp::now().to_string(),
            kind: kind.to_owned(),
            peer: peer.map(|p| p.to_string()),
            client_id: client.map(|c| c.to_hex()),
            detail,
        });
    }

    // ----- fed by the listener ---------------------------------------------------------

    /// A connection was accepted and will be served; the gauge drops when the guard does.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.metrics.connections_accepted.inc();
        self.metrics.connections_open.inc();
        OpenConnection(Arc::clone(self))
    }

    /// A connection was closed at once (`reason`: `failure-budget`, `per-address`,
    /// `tls-handshake`, `proxy-untrusted`, `proxy-header`). Counted every time; listed
    /// among the failures only when `listed` gives the number of refusals to report: once
    /// per address, reason and interval for refusals that cost the peer nothing (as their
    /// log lines), so that no flood pushes the other failures off the list.
    pub(crate) fn connection_refused(
        &self,
        peer: SocketAddr,
        reason: &'static str,
        listed: Option<super::refusals::Listed>,
    ) {
        self.metrics
            .connections_refused
            .get_or_create(&label("reason", reason))
            .inc();
        if reason == "failure-budget" {
            self.metrics
                .rate_limit_refusals
                .get_or_create(&label("limit", "failure"))
                .inc();
        }
        if let Some(listed) = listed {
            let detail = match (listed.count, listed.others) {
                (count, true) => format!(
                    "connection refused: {reason} ({count} from addresses beyond those \
                     counted apart, together, since the last entry)"
                ),
                (1, false) => format!("connection refused: {reason}"),
                (count, false) => format!(
                    "connection refused: {reason} ({count} from this address since the last \
                     entry)"
                ),
            };
            // Counted with others: not this peer's alone.
            let peer = (!listed.others).then_some(peer);
            self.failure("connection refused", peer, None, detail);
        }
    }

    // ----- fed by the connections -----------------------------------------------------

    /// Bytes read from a protocol connection.
    pub fn bytes_received(&self, bytes: usize) {
        self.metrics.bytes_received.inc_by(bytes as u64);
    }

    /// A storage job took `elapsed`.
    pub fn storage_job(&self, kind: &'static str, elapsed: Duration) {
        self.metrics
            .storage_seconds
            .get_or_create(&label("job", kind))
            .observe(elapsed.as_secs_f64());
    }

    /// An 828's header was decoded: its upload is in progress. False when it is not shown
    /// ([`LIVE_UPLOADS_KEPT`] others are).
    pub fn packet_begins(
        &self,
        peer: SocketAddr,
        client: ClientId,
        packet: &FilePacketHeader,
    ) -> bool {
        let now = Instant::now();
        let mut live = self.live();
        if live.uploads.len() >= LIVE_UPLOADS_KEPT && !live.uploads.contains_key(&client) {
            return false;
        }
        let fresh = || LiveUpload {
            peer,
            file_name: packet.file_name.as_str().to_owned(),
            packets_received: 0,
            total_packets: packet.total_packets,
            bytes: 0,
            file_size: packet.orig_file_size,
            started: now,
            updated: now,
        };
        let entry = live.uploads.entry(client).or_insert_with(fresh);
        if packet.packet_number == 1 || entry.file_name != packet.file_name.as_str() {
            // A new file (or the same one sent again from the start).
            *entry = fresh();
        }
        entry.peer = peer;
        entry.updated = now;
        let count = live.uploads.len();
        drop(live);
        self.metrics
            .uploads_in_progress
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        true
    }

    /// The upload and content bytes of an intermediate file packet's log line (an 828
    /// without a reply): what [`Monitor::record`] does with such a line is count it, so a
    /// connection may add them up and hand them over with [`Monitor::packets_received`].
    pub fn intermediate_packet(line: &LogLine) -> Option<(ClientId, u64)> {
        match line {
            LogLine::Request(request) if request.code == 828 && request.reply.is_none() => request
                .client
                .map(|client| (client, packet_content(request))),
            _ => None,
        }
    }

    /// `packets` intermediate file packets of `client`'s upload with `bytes` of content
    /// in all: the same as [`Monitor::record`] of each one's log line, with one lock.
    pub fn packets_received(&self, client: ClientId, packets: u64, bytes: u64) {
        self.metrics.requests.inc_by(828, packets);
        self.metrics.replies.inc_by(NO_REPLY, packets);
        self.count_packets(&client, packets, bytes);
    }

    fn count_packets(&self, client: &ClientId, packets: u64, bytes: u64) {
        let mut live = self.live();
        if let Some(upload) = live.uploads.get_mut(client) {
            let packets = u16::try_from(packets).unwrap_or(u16::MAX);
            upload.packets_received = upload.packets_received.saturating_add(packets);
            upload.bytes = upload.bytes.saturating_add(bytes);
            upload.updated = Instant::now();
        }
    }

    /// The conversation's log line (before it is formatted).
    pub fn record(&self, peer: SocketAddr, line: &LogLine) {
        match line {
            LogLine::Request(request) => self.request(peer, request),
            LogLine::AddressRepinned { .. } => {}
            LogLine::FailureBudgetSpent => {
                self.metrics
                    .rate_limit_refusals
                    .get_or_create(&label("limit", "failure"))
                    .inc();
                self.failure(
                    "rate limit",
                    Some(peer),
                    None,
                    "too many failed requests from this address: connection closed".into(),
                );
            }
            LogLine::AbandonedMidPacket { client, file } => {
                self.end_upload(client);
                self.failure(
                    "upload abandoned",
                    Some(peer),
                    Some(*client),
                    format!("connection ended mid-packet of {file}"),
                );
            }
            // A packet refused at once was never shown (a packet is shown once the
            // session has accepted it); one accepted, then failed, was, and its upload
            // is over unless the client has another one under way.
            LogLine::RefusedMidPacket {
                client,
                upload_left,
            } => {
                if !upload_left {
                    self.end_upload(client);
                }
            }
            LogLine::AbandonedWithConnection { client, file } => {
                self.end_upload(client);
                self.failure(
                    "upload abandoned",
                    Some(peer),
                    Some(*client),
                    format!("connection ended between packets of {file}"),
                );
            }
        }
    }

    fn request(&self, peer: SocketAddr, request: &RequestLog) {
        let m = &self.metrics;
        m.requests.inc(request.code);
        m.replies
            .inc(request.reply.map_or(NO_REPLY, ResponseCode::as_u16));
        if matches!(request.code, 901 | 902) {
            m.checksum_failures
                .get_or_create(&label("code", request.code))
                .inc();
            self.failure(
                if request.code == 901 {
                    "checksum mismatch (901, retrying)"
                } else {
                    "checksum mismatch (902, gave up)"
                },
                Some(peer),
                request.client,
                request.detail.clone().unwrap_or_default(),
            );
        }
        let refused = matches!(
            request.reply,
            Some(
                ResponseCode::ServerError
                    | ResponseCode::RegistrationFailed
                    | ResponseCode::ReconnectRejected
            )
        );
        // A short 1603 answers an intermediate packet of a client that opens a connection
        // per request (rule S2): only the 1603 to the last packet finishes the upload.
        let intermediate = request
            .packet
            .is_some_and(|(_, _, intermediate)| intermediate);
        if request.code == 828 {
            if let Some(client) = request.client {
                if request.reply == Some(ResponseCode::FileReceived) && !intermediate {
                    self.finish_upload(&client, request.payload);
                } else if refused {
                    // Not when the upload it refused is another's (a second connection of
                    // the client while one receives a packet): that one goes on.
                    if !request.upload_left {
                        self.end_upload(&client);
                    }
                } else {
                    self.count_packets(&client, 1, packet_content(request));
                }
            }
        }
        if refused {
            let detail = request.detail.clone().unwrap_or_default();
            match request.cause {
                Some(Cause::Storage) => {
                    m.storage_errors.inc(request.code);
                }
                Some(Cause::RateLimit) => {
                    m.rate_limit_refusals
                        .get_or_create(&label("limit", "registration"))
                        .inc();
                }
                Some(Cause::Capacity) | None => {}
            }
            self.failure(
                &format!(
                    "{} → {}",
                    request.code,
                    request.reply.map_or(0, ResponseCode::as_u16)
                ),
                Some(peer),
                request.client,
                detail,
            );
        }
    }

    fn finish_upload(&self, client: &ClientId, last_payload: u64) {
        let finished = self.live().uploads.remove(client);
        if let Some(upload) = finished {
            let _ = last_payload;
            self.metrics
                .upload_seconds
                .observe(upload.started.elapsed().as_secs_f64());
            self.metrics
                .upload_bytes
                .observe(f64::from(upload.file_size));
        }
        self.sync_uploads(Instant::now());
    }

    /// A client was removed (by the admin): its upload, if one was shown, is over.
    pub fn client_removed(&self, client: &ClientId) {
        self.end_upload(client);
    }

    fn end_upload(&self, client: &ClientId) {
        self.live().uploads.remove(client);
        self.sync_uploads(Instant::now());
    }

    /// Drops uploads idle for longer than the upload timeout (the session abandons them)
    /// and sets the gauge.
    fn sync_uploads(&self, now: Instant) {
        let mut live = self.live();
        let timeout = self.upload_timeout;
        live.uploads
            .retain(|_, u| now.saturating_duration_since(u.updated) <= timeout);
        let count = live.uploads.len();
        drop(live);
        self.metrics
            .uploads_in_progress
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    // ----- fed by the admin listener ---------------------------------------------------

    /// An admin HTTP response.
    pub fn admin_response(&self, status: u16) {
        self.metrics
            .admin_requests
            .get_or_create(&label("status", status))
            .inc();
    }

    /// A failed admin login from `peer`.
    pub fn admin_login_failed(&self, peer: SocketAddr, detail: &str) {
        self.metrics.admin_login_failures.inc();
        self.failure("admin login", Some(peer), None, detail.to_owned());
    }

    /// A wrong admin token refused beyond the failure limit: counted like a failed login,
    /// listed only when `listed` says what to list (once per interval, with a count, so
    /// that no one without a token can push the other failures off the list).
    pub fn admin_login_refused(&self, peer: SocketAddr, listed: Option<String>) {
        self.metrics.admin_login_failures.inc();
        if let Some(detail) = listed {
            self.failure("admin login", Some(peer), None, detail);
        }
    }

    /// A pass of the running clean-up of shared storage ended: what it did. One that was
    /// limited or failed is listed among the failures too (at most one a pass).
    pub fn store_swept(&self, swept: &Swept) {
        let Swept {
            outcome,
            recovered,
            pending,
            reason,
        } = swept;
        self.metrics
            .store_sweeps
            .get_or_create(&label("outcome", outcome.as_str()))
            .inc();
        if *outcome != SweepOutcome::Done {
            let why = reason.as_deref().unwrap_or("no reason given");
            let detail = format!("{}: {why}", outcome.as_str());
            self.failure("store clean-up", None, None, detail);
        }
        for (kind, count) in [
            ("uploads", recovered.stale_temps),
            ("unrecorded", recovered.orphans.len()),
            ("replaced", recovered.replaced.len()),
            ("recorded", pending.removed),
        ] {
            self.metrics
                .store_sweep_removed
                .get_or_create(&label("kind", kind))
                .inc_by(count as u64);
        }
        let left = recovered.failed + pending.left;
        self.metrics.store_sweep_left.inc_by(left as u64);
    }

    // ----- read by the admin listener ---------------------------------------------------

    /// Connections, uploads in progress and the last failures (newest first).
    pub fn snapshot(&self) -> LiveView {
        let now = Instant::now();
        self.sync_uploads(now);
        let live = self.live();
        let mut uploads: Vec<UploadView> = live
            .uploads
            .iter()
            .map(|(client, u)| {
                let seconds = now.saturating_duration_since(u.started).as_secs_f64();
                UploadView {
                    client_id: client.to_hex(),
                    client_name: None,
                    peer: u.peer.to_string(),
                    file_name: u.file_name.clone(),
                    packets_received: u.packets_received,
                    total_packets: u.total_packets,
                    bytes_received: u.bytes,
                    file_size: u.file_size,
                    seconds,
                    bytes_per_second: if seconds > 0.0 {
                        (u.bytes as f64 / seconds).round() as u64
                    } else {
                        0
                    },
                }
            })
            .collect();
        uploads.sort_by(|a, b| (&a.client_id, &a.file_name).cmp(&(&b.client_id, &b.file_name)));
        LiveView {
            connections_open: self.metrics.connections_open.get().max(0) as u64,
            connections_accepted: self.metrics.connections_accepted.get(),
            uploads,
            failures: live.failures.iter().rev().cloned().collect(),
        }
    }
}

/// An open protocol connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Monitor>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfc_proto::Name;

    fn header(number: u16, total: u16) -> FilePacketHeader {
        FilePacketHeader {
            content_size: 4096,
            orig_file_size: 4000,
            packet_number: number,
            total_packets: total,
            file_name: Name::new("f.bin").unwrap(),
        }
    }

    fn packet_log(client: ClientId, reply: Option<ResponseCode>) -> LogLine {
        LogLine::Request(RequestLog {
            code: 828,
            client: Some(client),
            version: 3,
            payload: 267 + 1024,
            packet: Some((1, 2, reply.is_none())),
            reply,
            elapsed: Duration::from_millis(1),
            detail: reply.map(|_| "database error: down".to_owned()),
            cause: reply.map(|_| Cause::Storage),
            file: Some(Name::new("f.bin").unwrap()),
            upload_left: false,
        })
    }

    #[test]
    fn uploads_are_followed_until_their_reply_and_bounded() {
        let monitor = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let a = ClientId([1; 16]);
        assert!(monitor.packet_begins(peer, a, &header(1, 2)));
        monitor.record(peer, &packet_log(a, None));
        let live = monitor.snapshot();
        assert_eq!(live.uploads.len(), 1);
        assert_eq!(live.uploads[0].packets_received, 1);
        assert_eq!(live.uploads[0].bytes_received, 1024);
        // A refusal ends it and is listed as a failure.
        monitor.record(peer, &packet_log(a, Some(ResponseCode::ServerError)));
        let live = monitor.snapshot();
        assert!(live.uploads.is_empty());
        assert_eq!(live.failures[0].kind, "828 → 1607");
        assert!(monitor
            .encode()
            .contains("sfc_storage_errors_total{code=\"828\"} 1"));
        // Made-up client IDs cannot grow the map without bound.
        for i in 0..LIVE_UPLOADS_KEPT as u32 + 10 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            monitor.packet_begins(peer, ClientId(id), &header(1, 2));
        }
        assert_eq!(monitor.snapshot().uploads.len(), LIVE_UPLOADS_KEPT);
        assert!(!monitor.packet_begins(peer, ClientId([0xee; 16]), &header(2, 2)));
        // Idle ones go after the upload timeout.
        let quick = Monitor::new(Duration::ZERO);
        quick.packet_begins(peer, a, &header(1, 2));
        std::thread::sleep(Duration::from_millis(5));
        assert!(quick.snapshot().uploads.is_empty());
    }

    #[test]
    fn a_short_1603_to_an_intermediate_packet_does_not_finish_the_upload() {
        // A client that opens a connection per request gets a short 1603 for every
        // packet (rule S2); only the last packet's 1603 ends the upload.
        let monitor = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let a = ClientId([2; 16]);
        let short_1603 = |number: u16, total: u16| {
            LogLine::Request(RequestLog {
                code: 828,
                client: Some(a),
                version: 3,
                payload: 267 + 1024,
                packet: Some((number, total, number < total)),
                reply: Some(ResponseCode::FileReceived),
                elapsed: Duration::from_millis(1),
                detail: None,
                cause: None,
                file: Some(Name::new("f.bin").unwrap()),
                upload_left: false,
            })
        };
        for number in 1..=2 {
            assert!(monitor.packet_begins(peer, a, &header(number, 3)));
            monitor.record(peer, &short_1603(number, 3));
        }
        let live = monitor.snapshot();
        assert_eq!(live.uploads.len(), 1);
        assert_eq!(live.uploads[0].packets_received, 2);
        assert_eq!(live.uploads[0].bytes_received, 2048);
        assert!(!monitor
            .encode()
            .contains("sfc_upload_duration_seconds_count 1"));
        monitor.packet_begins(peer, a, &header(3, 3));
        monitor.record(peer, &short_1603(3, 3));
        assert!(monitor.snapshot().uploads.is_empty());
        let text = monitor.encode();
        assert!(
            text.contains("sfc_upload_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn packets_handed_over_together_count_as_their_log_lines_would() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let a = ClientId([3; 16]);
        let one_by_one = Monitor::new(Duration::from_secs(600));
        let together = Monitor::new(Duration::from_secs(600));
        for monitor in [&one_by_one, &together] {
            assert!(monitor.packet_begins(peer, a, &header(1, 9)));
        }
        let mut bytes = 0;
        for _ in 0..5 {
            let line = packet_log(a, None);
            let (client, content) = Monitor::intermediate_packet(&line).unwrap();
            assert_eq!((client, content), (a, 1024));
            bytes += content;
            one_by_one.record(peer, &line);
        }
        together.packets_received(a, 5, bytes);
        let (x, y) = (one_by_one.snapshot(), together.snapshot());
        assert_eq!(x.uploads[0].packets_received, 5);
        assert_eq!(y.uploads[0].packets_received, 5);
        assert_eq!(x.uploads[0].bytes_received, y.uploads[0].bytes_received);
        assert_eq!(one_by_one.encode(), together.encode());
        // Any other line is recorded one by one.
        assert_eq!(
            Monitor::intermediate_packet(&packet_log(a, Some(ResponseCode::ServerError))),
            None
        );
        assert_eq!(
            Monitor::intermediate_packet(&LogLine::FailureBudgetSpent),
            None
        );
    }

    #[test]
    fn code_labels_are_the_codes_and_counts_reach_metrics() {
        // Every request and reply code is counted under its number.
        let every = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let line = |code: u16, reply: Option<ResponseCode>| {
            let mut line = packet_log(ClientId([9; 16]), reply);
            if let LogLine::Request(request) = &mut line {
                request.code = code;
            }
            line
        };
        for code in RequestCode::ALL {
            every.record(peer, &line(code.as_u16(), None));
        }
        for reply in ResponseCode::ALL {
            every.record(peer, &line(825, Some(reply)));
        }
        let text = every.encode();
        for code in RequestCode::ALL {
            let count = if code == RequestCode::Register { 9 } else { 1 };
            let sample = format!("sfc_requests_total{{code=\"{}\"}} {count}\n", code.as_u16());
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        for reply in ResponseCode::ALL {
            let sample = format!("sfc_replies_total{{code=\"{}\"}} 1\n", reply.as_u16());
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        assert!(
            text.contains("sfc_replies_total{code=\"none\"} 7\n"),
            "{text}"
        );

        let monitor = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let a = ClientId([1; 16]);
        for _ in 0..3 {
            monitor.record(peer, &packet_log(a, None));
        }
        monitor.record(peer, &packet_log(a, Some(ResponseCode::ServerError)));
        // Codes a client invents share one series: no series per value.
        for invented in [4242, 7, 65535] {
            let mut odd = packet_log(a, Some(ResponseCode::ServerError));
            if let LogLine::Request(request) = &mut odd {
                request.code = invented;
            }
            monitor.record(peer, &odd);
        }
        let text = monitor.encode();
        assert!(
            text.contains("sfc_requests_total{code=\"828\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("sfc_requests_total{code=\"other\"} 3"),
            "{text}"
        );
        assert!(!text.contains("4242") && !text.contains("65535"), "{text}");
        assert!(
            text.contains("sfc_storage_errors_total{code=\"other\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sfc_replies_total{code=\"none\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sfc_replies_total{code=\"1607\"} 4"),
            "{text}"
        );
        // Only the codes seen are listed.
        assert!(!text.contains("code=\"825\""), "{text}");
    }

    /// A refusal counted with every address beyond those remembered apart is listed
    /// without the peer that happened to trigger its line.
    #[test]
    fn refusals_counted_together_name_no_peer() {
        let monitor = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let together = crate::net::refusals::Listed {
            count: 7,
            others: true,
        };
        monitor.connection_refused(peer, "per-address", Some(together));
        monitor.connection_refused(peer, "per-address", None);
        let failures = monitor.snapshot().failures;
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].peer, None);
        assert!(
            failures[0].detail.contains("7 from addresses beyond"),
            "{}",
            failures[0].detail
        );
    }

    #[test]
    fn failures_keep_the_newest() {
        let monitor = Monitor::new(Duration::from_secs(600));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..FAILURES_KEPT + 5 {
            monitor.connection_refused(
                peer,
                "per-address",
                Some(crate::net::refusals::Listed::ONE),
            );
        }
        monitor.admin_login_failed(peer, "newest");
        let failures = monitor.snapshot().failures;
        assert_eq!(failures.len(), FAILURES_KEPT);
        assert_eq!(failures[0].detail, "newest");
    }

    /// A flood of one kind of failure, from as many addresses as one likes, fills the
    /// list but pushes no other kind off it; the flood's own oldest entries make room.
    #[test]
    fn a_flood_of_one_kind_keeps_the_other_kinds_listed() {
        let monitor = Monitor::new(Duration::from_secs(600));
        let peer = |n: u32| SocketAddr::from((std::net::Ipv4Addr::from(0x7f00_0000 + n), 9));
        monitor.store_swept(&Swept {
            outcome: SweepOutcome::Failed,
            recovered: Default::default(),
            pending: Default::default(),
            reason: Some("the bucket cannot be listed".into()),
        });
        monitor.connection_refused(
            peer(1),
            "per-address",
            Some(crate::net::refusals::Listed::ONE),
        );
        for n in 0..5 * FAILURES_KEPT as u32 {
            monitor.admin_login_failed(peer(n), &format!("wrong token {n}"));
        }
        let failures = monitor.snapshot().failures;
        assert_eq!(failures.len(), FAILURES_KEPT);
        let kinds: Vec<&str> = failures.iter().map(|f| f.kind.as_str()).collect();
        assert!(kinds.contains(&"store clean-up"), "{kinds:?}");
        assert!(kinds.contains(&"connection refused"), "{kinds:?}");
        // The flood's newest, newest first.
        let last = 5 * FAILURES_KEPT - 1;
        assert_eq!(failures[0].detail, format!("wrong token {last}"));
        assert_eq!(
            failures[FAILURES_KEPT - 3].detail,
            format!("wrong token {}", last - (FAILURES_KEPT - 3))
        );
        // A second flood shares the list with the first; the rare kinds stay.
        for n in 0..FAILURES_KEPT as u32 {
            monitor.connection_refused(
                peer(n),
                "per-address",
                Some(crate::net::refusals::Listed::ONE),
            );
        }
        let failures = monitor.snapshot().failures;
        let count = |kind: &str| failures.iter().filter(|f| f.kind == kind).count();
        assert_eq!(count("store clean-up"), 1);
        assert_eq!(count("admin login"), count("connection refused") - 1);
    }
}
