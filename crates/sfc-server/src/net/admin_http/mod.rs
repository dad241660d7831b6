//! The admin HTTP listener (`--admin-listen`): health checks, `/metrics`, the JSON API
//! (`/api/v1/…`, described by `/api/v1/openapi.json`) and server-rendered pages, on the
//! protocol listener's runtime. What it shows comes from `admin/` (the same types as
//! `sfc-server clients|files --json`) and the [`Monitor`]; what it changes goes through
//! [`Core`].
//!
//! Every request naming a host other than an IP address, `localhost` or an
//! `--admin-host` name is refused first (421, [`host`]: DNS rebinding). Endpoints without
//! authentication: `/healthz`, `/readyz`, `/login`, `/static/…`,
//! `/api/v1/openapi.json`. Everything else needs the token (`Authorization: Bearer`) or
//! a session cookie, checked before the request's path, query or form is read
//! ([`access::Authorized`]); a state-changing request with a cookie must carry the
//! session's CSRF token (`X-CSRF-Token` header or a `csrf` form field).

mod access;
mod actions;
mod api;
mod auth;
mod host;
mod idle;
mod listen;
mod login_limit;
mod overview;
mod pages;
mod ready;
mod send_timeout;
mod templates;

use crate::net::monitor::Monitor;
use crate::session::Core;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use zeroize::Zeroizing;

use auth::Sessions;
pub(crate) use listen::AdminServer;
/// The cap on open admin connections, for the descriptor budget.
pub(crate) use listen::MAX_CONNECTIONS as MAX_ADMIN_CONNECTIONS;
pub use listen::MAX_CONNECTIONS_PER_ADDRESS;
use login_limit::FailedLogins;

pub use auth::COOKIE;
pub use login_limit::{BLOCKED_VERDICT_DELAY, LOGIN_FAILURES_PER_MINUTE};

/// The OpenAPI document of `/api/v1` (written by hand; `tests/admin_api.rs` checks it
/// against the routes and the JSON the server returns).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Default page size of the list endpoints and pages.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page size a request may ask for.
pub const MAX_PAGE: usize = 500;

/// Shared by every admin request.
#[derive(Debug)]
pub(crate) struct AdminState {
    core: Arc<Core>,
    monitor: Arc<Monitor>,
    token: Zeroizing<String>,
    sessions: Sessions,
    failed_logins: FailedLogins,
    secure_cookie: bool,
    overview: overview::Overview,
    readiness: ready::Readiness,
    /// The log line about logins refused beyond the limit ([`access::login_refused`]).
    refused_logins_logged: crate::net::log_throttle::SharedLine,
    /// The line of failed logins within the limit: one per interval, from any address (a
    /// guesser with many addresses would otherwise write five lines a minute from each).
    failed_logins_logged: crate::net::log_throttle::SharedLine,
    /// The names requests may give as `Host` ([`host::check_host`]).
    hosts: host::AllowedHosts,
}

type Shared = Arc<AdminState>;

impl AdminState {
    /// Logs what the throttled lines (failed `/readyz` probes, failed logins, logins
    /// refused beyond the limit, requests for other hosts) held back: events after their last line that no
    /// later event reported. Called every half interval (a held-back count is logged
    /// within 1.5 intervals of its line), and with `all` at shutdown, so that the end of
    /// a burst is counted too.
    fn flush_lines(&self, all: bool) {
        if let Some(failures) = self.readiness.failures_logged.held_back(all) {
            tracing::warn!(
                failures,
                "admin: /readyz: {failures} more failed probes since the last line"
            );
        }
        if let Some(failed) = self.failed_logins_logged.held_back(all) {
            tracing::warn!(
                failed,
                "admin: {failed} more failed logins since the last line"
            );
        }
        if let Some(refused) = self.refused_logins_logged.held_back(all) {
            tracing::warn!(
                refused,
                "admin: {refused} more logins refused beyond the limit since the last line"
            );
        }
        if let Some(refused) = self.hosts.refused_logged.held_back(all) {
            tracing::warn!(refused, "admin: {refused} more requests for hosts this listener does not answer to refused since the last line");
        }
    }
}

/// At most one line per this interval for each of the admin listener's throttled log
/// lines (failed `/readyz` probes, failed logins, logins refused beyond the limit,
/// requests for other hosts, connections closed before they were served), with the
/// number of events since the last.
pub(crate) const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How often [`AdminState::flush_lines`] runs: half of [`LOG_EVERY`].
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(LOG_EVERY.as_secs() / 2);

/// Largest request body read (see [`router`]).
const MAX_BODY: usize = 8 * 1024;

/// The remote address of an admin connection (plain or TLS).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(SocketAddr);

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
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stats", get(api::api_stats))
        .route("/api/v1/clients", get(api::api_clients))
        .route(
            "/api/v1/clients/{id}",
            get(api::api_client).delete(actions::api_remove_client),
        )
        .route("/api/v1/clients/{id}/files", get(api::api_files))
        .route(
            "/api/v1/clients/{id}/file",
            get(actions::download).delete(actions::api_remove_file),
        )
        .route("/api/v1/uploads", get(api::api_uploads))
        .route("/api/v1/failures", get(api::api_failures))
        .merge(pages::routes())
        // The largest body any route takes is a form of a few hundred bytes (login, CSRF
        // token and a file name): nothing is read beyond this, before or after the check
        // of the token.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        // Before any route; its 421 still gets the headers and is counted.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            host::check_host,
        ))
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
        add_refusal_headers(self.0, response.headers_mut());
        response
    }
}

/// What a refusal's status calls for: a 401 names its scheme (RFC 9110), a 429 says
/// when to try again. For the API's errors and the pages' alike.
fn add_refusal_headers(status: StatusCode, headers: &mut axum::http::HeaderMap) {
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The only 429: wrong tokens beyond the failed-login limit.
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(login_limit::RETRY_AFTER.as_secs()),
        );
    }
}
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
