//! The admin HTTP listener (`--admin-listen`): health checks, `/metrics`, the JSON API
//! (`/api/v1/…`, described by `/api/v1/openapi.json`) and server-rendered pages, on the
//! protocol listener's runtime. What it shows comes from `admin/` (the same types as
//! `sfc-server clients|files --json`) and the [`Monitor`]; what it changes goes through
//! [`Core`].
//!
//! Endpoints without authentication: `/healthz`, `/readyz`, `/login`, `/static/…`,
//! `/api/v1/openapi.json`. Everything else needs the token (`Authorization: Bearer`) or
//! a session cookie; a state-changing request with a cookie must carry the session's
//! CSRF token (`X-CSRF-Token` header or a `csrf` form field).

mod auth;
mod pages;

use crate::admin::{client_views, file_views, ClientView, FileView, StatsView};
use crate::config::AdminConfig;
use crate::net::monitor::Monitor;
use crate::session::{ClientRemoval, Core};
use crate::storage::Timestamp;
use anyhow::Context;
use auth::{same_secret, Sessions};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sfc_proto::ClientId;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

pub use auth::{COOKIE, LOGIN_FAILURES_PER_MINUTE};

/// The OpenAPI document of `/api/v1` (written by hand; `tests/admin_api.rs` checks it
/// against the routes and the JSON the server returns).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Default page size of the list endpoints and pages.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page size a request may ask for.
pub const MAX_PAGE: usize = 500;
/// A TLS handshake on the admin listener must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the store at once for a download.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// Shared by every admin request.
#[derive(Debug)]
pub(crate) struct AdminState {
    core: Arc<Core>,
    monitor: Arc<Monitor>,
    token: Zeroizing<String>,
    sessions: Sessions,
    secure_cookie: bool,
}

type Shared = Arc<AdminState>;

/// The remote address of an admin connection (plain or TLS).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A byte stream: TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The admin socket, accepting plain TCP or TLS connections.
pub(crate) struct AdminListener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(acceptor) = &self.tls else {
                return (Box::new(stream), peer);
            };
            // One handshake at a time, each bounded: enough for an operator's browser.
            match crate::net::tls::handshake(acceptor, stream, HANDSHAKE_TIMEOUT).await {
                Ok(tls) => return (Box::new(tls), peer),
                Err(reason) => {
                    tracing::info!(%peer, %reason, "admin listener: TLS handshake failed")
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub(crate) struct AdminServer {
    listener: AdminListener,
    state: Shared,
}

impl AdminServer {
    /// Reads (or creates) the token, loads the TLS files and binds.
    pub(crate) async fn bind(
        config: &AdminConfig,
        core: Arc<Core>,
        monitor: Arc<Monitor>,
    ) -> anyhow::Result<Self> {
        config.check().map_err(anyhow::Error::msg)?;
        let token = auth::load_or_create_token(&config.token_file)?;
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                crate::net::tls::server_config(files)?,
            )),
            None => None,
        };
        let tcp = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --admin-listen {}", config.listen))?;
        let secure_cookie = tls.is_some();
        Ok(AdminServer {
            listener: AdminListener { tcp, tls },
            state: Arc::new(AdminState {
                core,
                monitor,
                token,
                sessions: Sessions::default(),
                secure_cookie,
            }),
        })
    }

    /// The address bound.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.tcp.local_addr()
    }

    /// Serves until `stop` completes.
    pub(crate) async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) {
        let addr = self.local_addr().ok();
        let scheme = if self.listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(addr) = addr {
            tracing::info!("admin listener on {scheme}://{addr}/");
        }
        let app = router(self.state).into_make_service_with_connect_info::<Peer>();
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "admin listener failed");
        }
    }
}

/// Every route (the tests compare this list with the OpenAPI document).
pub const API_ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/clients"),
    ("get", "/api/v1/clients/{id}"),
    ("delete", "/api/v1/clients/{id}"),
    ("get", "/api/v1/clients/{id}/files"),
    ("get", "/api/v1/clients/{id}/file"),
    ("delete", "/api/v1/clients/{id}/file"),
    ("get", "/api/v1/uploads"),
    ("get", "/api/v1/failures"),
    ("get", "/api/v1/openapi.json"),
];

fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stats", get(api_stats))
        .route("/api/v1/clients", get(api_clients))
        .route(
            "/api/v1/clients/{id}",
            get(api_client).delete(api_remove_client),
        )
        .route("/api/v1/clients/{id}/files", get(api_files))
        .route(
            "/api/v1/clients/{id}/file",
            get(download).delete(api_remove_file),
        )
        .route("/api/v1/uploads", get(api_uploads))
        .route("/api/v1/failures", get(api_failures))
        .merge(pages::routes())
        .layer(axum::middleware::map_response_with_state(
            Arc::clone(&state),
            finish_response,
        ))
        .with_state(state)
}

/// Counts the response and adds the headers every response gets.
async fn finish_response(State(state): State<Shared>, mut response: Response) -> Response {
    state.monitor.admin_response(response.status().as_u16());
    let headers = response.headers_mut();
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in fixed {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

// ----- errors ---------------------------------------------------------------------------

/// An API error: its status and a message, as `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "admin request failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(ErrorBody { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

// ----- authentication -------------------------------------------------------------------

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A session cookie; its CSRF token.
    Session { id: String, csrf: String },
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks the bearer token or the session cookie. A wrong bearer token counts as a
/// failed login.
pub(crate) fn authenticate(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Auth, ApiError> {
    let now = Instant::now();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if state.sessions.blocked(peer.ip(), now) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; wait a minute",
            ));
        }
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(given.trim(), &state.token) {
            return Ok(Auth::Bearer);
        }
        login_failed(state, peer, "wrong bearer token");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token"));
    }
    if let Some(id) = cookie(headers, COOKIE) {
        if let Some(csrf) = state.sessions.csrf(id, now) {
            return Ok(Auth::Session {
                id: id.to_owned(),
                csrf,
            });
        }
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "log in: Authorization: Bearer <token from the admin token file>",
    ))
}

fn login_failed(state: &AdminState, peer: SocketAddr, why: &str) {
    state.sessions.failed(peer.ip(), Instant::now());
    state.monitor.admin_login_failed(peer, why);
    tracing::warn!(%peer, why, "admin: failed login");
}

/// For a state-changing request: a session must echo its CSRF token (header or form
/// field); a bearer token is not sent by browsers on their own and needs none.
pub(crate) fn check_csrf(
    auth: &Auth,
    headers: &HeaderMap,
    form: Option<&str>,
) -> Result<(), ApiError> {
    match auth {
        Auth::Bearer => Ok(()),
        Auth::Session { csrf, .. } => {
            let given = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .or(form)
                .unwrap_or("");
            if same_secret(given, csrf) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token",
                ))
            }
        }
    }
}

// ----- blocking work --------------------------------------------------------------------

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(ApiError::internal(error)),
        Err(error) => Err(ApiError::internal(error)),
    }
}

fn client_id(text: &str) -> Result<ClientId, ApiError> {
    ClientId::from_hex(text)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not a client ID (32 hex digits)"))
}

// ----- health and metrics -----------------------------------------------------------------

/// Ready when the metadata store answers a lookup and the blob store a size query
/// (a missing file is an answer).
async fn readyz(State(state): State<Shared>) -> Response {
    let core = Arc::clone(&state.core);
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let probe = ClientId([0; 16]);
        core.meta_store()
            .client(&probe)
            .map_err(|e| format!("database: {e}"))?;
        match core
            .blob_store()
            .size(&format!("files/{}/readyz-probe", probe.to_hex()))
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("file store: {e}")),
        }
    })
    .await;
    match result {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        )
            .into_response(),
    }
}

async fn metrics(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.monitor.encode(),
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ----- the JSON API -----------------------------------------------------------------------

/// `?offset=&limit=` of the list endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// One page of a list.
#[derive(Debug, Serialize)]
pub(crate) struct Page<T> {
    /// Items in the whole list.
    total: usize,
    offset: usize,
    limit: usize,
    items: Vec<T>,
}

fn page<T>(all: Vec<T>, query: &PageQuery) -> Page<T> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let total = all.len();
    let items = all.into_iter().skip(query.offset).take(limit).collect();
    Page {
        total,
        offset: query.offset,
        limit,
        items,
    }
}

pub(crate) async fn stats(state: &AdminState) -> Result<StatsView, ApiError> {
    let core = Arc::clone(&state.core);
    let (clients, files, bytes) = blocking(move || {
        let clients = core.meta_store().clients()?.len();
        let files = file_views(core.meta_store(), core.blob_store(), None)?;
        let bytes = files.iter().filter_map(|f| f.size).sum::<u64>();
        Ok((clients, files.len(), bytes))
    })
    .await?;
    let live = state.monitor.snapshot();
    Ok(StatsView {
        clients,
        files,
        bytes_stored: bytes,
        connections_open: live.connections_open,
        uploads_in_progress: live.uploads.len(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

async fn api_stats(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<StatsView>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(stats(&state).await?))
}

pub(crate) async fn all_clients(state: &AdminState) -> Result<Vec<ClientView>, ApiError> {
    let core = Arc::clone(&state.core);
    blocking(move || client_views(core.meta_store(), core.blob_store())).await
}

async fn api_clients(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<ClientView>>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(page(all_clients(&state).await?, &query)))
}

pub(crate) async fn one_client(state: &AdminState, id: &str) -> Result<ClientView, ApiError> {
    let id = client_id(id)?.to_hex();
    all_clients(state)
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such client"))
}

async fn api_client(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(one_client(&state, &id).await?))
}

pub(crate) async fn client_files(state: &AdminState, id: &str) -> Result<Vec<FileView>, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    blocking(move || {
        if core.meta_store().client(&id)?.is_none() {
            return Ok(None);
        }
        file_views(core.meta_store(), core.blob_store(), Some(&id)).map(Some)
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such client"))
}

async fn api_files(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<FileView>>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(page(client_files(&state, &id).await?, &query)))
}

/// `?name=` of the file endpoints (a label may hold any character, `/` too).
#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    name: String,
}

/// Streams a stored file back, read in pieces on the blocking pool.
pub(crate) async fn download_file(
    state: &AdminState,
    id: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let label = name.to_owned();
    let (size, reader) = blocking(move || {
        let Some(record) = core.meta_store().file(&id, &label)? else {
            return Ok(None);
        };
        let size = core.blob_store().size(&record.path)?;
        let reader = core.blob_store().open(&record.path)?;
        Ok(Some((size, reader)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such file"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; DOWNLOAD_CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = tx.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}");
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn download(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Result<Response, ApiError> {
    authenticate(&state, peer, &headers)?;
    download_file(&state, &id, &query.name).await
}

/// What a delete removed.
#[derive(Debug, Serialize)]
pub(crate) struct Removed {
    /// The client ID.
    client_id: String,
    /// The files removed (labels).
    files: Vec<String>,
}

pub(crate) async fn remove_file(
    state: &AdminState,
    id: &str,
    name: &str,
) -> Result<Removed, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let label = name.to_owned();
    let removed = blocking(move || Ok(core.admin_remove_file(&id, &label, Timestamp::now())?))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such file"))?;
    tracing::info!(client = %id.short(), file = %removed.file_name, "admin: file deleted");
    Ok(Removed {
        client_id: id.to_hex(),
        files: vec![removed.file_name],
    })
}

async fn api_remove_file(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Result<Json<Removed>, ApiError> {
    let auth = authenticate(&state, peer, &headers)?;
    check_csrf(&auth, &headers, None)?;
    Ok(Json(remove_file(&state, &id, &query.name).await?))
}

pub(crate) async fn remove_client(state: &AdminState, id: &str) -> Result<Removed, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let files = match blocking(move || Ok(core.admin_remove_client(&id)?)).await? {
        ClientRemoval::Removed(files) => files,
        ClientRemoval::NoSuchClient => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such client"))
        }
        ClientRemoval::Busy => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "a file packet of this client is being received; try again when it is done",
            ))
        }
    };
    tracing::info!(client = %id.short(), files = files.len(), "admin: client removed");
    Ok(Removed {
        client_id: id.to_hex(),
        files: files.into_iter().map(|f| f.file_name).collect(),
    })
}

async fn api_remove_client(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    let auth = authenticate(&state, peer, &headers)?;
    check_csrf(&auth, &headers, None)?;
    Ok(Json(remove_client(&state, &id).await?))
}

/// The uploads in progress, with the clients' names.
pub(crate) async fn uploads(state: &AdminState) -> Result<Vec<crate::admin::UploadView>, ApiError> {
    let mut uploads = state.monitor.snapshot().uploads;
    if !uploads.is_empty() {
        let names = all_clients(state).await?;
        for upload in &mut uploads {
            upload.client_name = names
                .iter()
                .find(|c| c.id == upload.client_id)
                .map(|c| c.name.clone());
        }
    }
    Ok(uploads)
}

async fn api_uploads(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::admin::UploadView>>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(uploads(&state).await?))
}

async fn api_failures(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<crate::admin::FailureView>>, ApiError> {
    authenticate(&state, peer, &headers)?;
    Ok(Json(page(state.monitor.snapshot().failures, &query)))
}
