//! How a request proves who it is: the bearer token or a session cookie, the failed
//! logins they count, and the CSRF token a session's state-changing request must echo.

use super::auth::{same_secret, COOKIE};
use super::idle::Refusable;
use super::login_limit::{self, BLOCKED_VERDICT_DELAY};
use super::{AdminState, ApiError, Peer, Shared};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use std::net::SocketAddr;
use std::time::Instant;

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A session cookie; its CSRF token.
    Session { id: String, csrf: String },
}

/// Every value of the cookie `name` the request carries: a browser sends several when
/// another site on the same host (cookies ignore the port) set one of the same name.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks the bearer token or the session cookie. A wrong bearer token counts as a
/// failed login; beyond the limit it gets 429. The right token is let in even then:
/// refusing it would let anyone sharing the operator's address (every local user, on
/// the default loopback listener) lock the operator out. Instead, while the address is
/// blocked every verdict on a bearer token waits [`BLOCKED_VERDICT_DELAY`] first, the
/// right one's too: a guess per connection per delay. So the limit slows guessing (and
/// keeps the log and the failure list small: [`login_refused`]) but the token's length
/// stops it: 256 random bits as written, a warning below 32 characters.
pub(crate) async fn authenticate(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
    connection: Option<&Refusable>,
) -> Result<Auth, ApiError> {
    // Only a Bearer header is a try of the token: another scheme (a reverse proxy's
    // Basic credentials the browser sends along) leaves the session cookie to decide.
    // The scheme's name is case-insensitive (RFC 7235).
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default().trim_start())
        .map(|value| value.split_once(' ').unwrap_or((value, "")))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"));
    if let Some((_, given)) = bearer {
        wait_if_blocked(state, peer, connection).await;
        if same_secret(given.trim(), &state.token) {
            return Ok(Auth::Bearer);
        }
        if state.failed_logins.blocked(peer.ip(), Instant::now()) {
            login_refused(state, peer, "wrong bearer token");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                login_limit::refusal_text(),
            ));
        }
        login_failed(state, peer, "wrong bearer token");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token"));
    }
    let now = Instant::now();
    for id in cookies(headers, COOKIE) {
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

/// A request's credentials, checked by [`authenticate`]. As a route's first extractor it
/// refuses a request without them (401, 429) before its path, query or form is parsed:
/// a stranger's malformed request gets the answer a well-formed one would, not a 400,
/// 415 or 422 describing what the route takes.
pub(crate) struct Authorized(pub(crate) Auth);

impl FromRequestParts<Shared> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let connection = parts.extensions.get::<Refusable>();
        authenticate(state, peer(parts)?, &parts.headers, connection)
            .await
            .map(Authorized)
    }
}

/// The remote address the listener put into the request (`listen.rs`).
pub(super) fn peer(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(peer))| *peer)
        .ok_or_else(|| ApiError::internal("the request carries no remote address"))
}

/// Waits [`BLOCKED_VERDICT_DELAY`] if `peer`'s address is blocked (see [`authenticate`]);
/// meanwhile its `connection` may be closed for a newcomer to a full listener.
pub(super) async fn wait_if_blocked(
    state: &AdminState,
    peer: SocketAddr,
    connection: Option<&Refusable>,
) {
    if state.failed_logins.blocked(peer.ip(), Instant::now()) {
        let _delayed = connection.map(Refusable::delayed);
        tokio::time::sleep(BLOCKED_VERDICT_DELAY).await;
    }
}

/// A wrong token within the limit: counted against `peer`'s address, listed among the
/// failures, and logged at most once per [`super::LOG_EVERY`] from any address, with the
/// number since the last line.
pub(super) fn login_failed(state: &AdminState, peer: SocketAddr, why: &str) {
    state.failed_logins.failed(peer.ip(), Instant::now());
    state.monitor.admin_login_failed(peer, why);
    if let Some(failed) = state.failed_logins_logged.count() {
        tracing::warn!(%peer, why, failed, "admin: failed login");
    }
}

/// A wrong token beyond the failure limit: refused without a verdict (429), counted in
/// `admin_login_failures_total` like any failed login, and logged and listed among the
/// failures at most once per [`super::LOG_EVERY`], with the number since the last line
/// (a guesser can flood neither the log nor the failure list).
pub(super) fn login_refused(state: &AdminState, peer: SocketAddr, why: &str) {
    let due = state.refused_logins_logged.count();
    let listed = due.map(|count| {
        tracing::warn!(
            %peer,
            refused = count,
            "admin: logins refused: too many failed logins (at most one line every {} s, with the number refused since the last, from any address)",
            super::LOG_EVERY.as_secs()
        );
        format!("{why}, beyond the limit ({count} refused since the last such entry)")
    });
    state.monitor.admin_login_refused(peer, listed);
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
