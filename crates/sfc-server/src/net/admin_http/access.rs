//! How a request proves who it is: the bearer token or a session cookie, the failed
//! logins they count, and the CSRF token a session's state-changing request must echo.

use super::auth::{same_secret, COOKIE};
use super::login_limit;
use super::{AdminState, ApiError};
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
/// failed login; beyond the limit it gets 429. The right token is let in even then:
/// refusing it would let anyone sharing the operator's address (every local user, on
/// the default loopback listener) lock the operator out, and with 256 random bits the
/// limit is not what stops guessing (it keeps the log and the failure list small).
pub(crate) fn authenticate(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Auth, ApiError> {
    let now = Instant::now();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(given.trim(), &state.token) {
            return Ok(Auth::Bearer);
        }
        if state.failed_logins.blocked(peer.ip(), now) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                login_limit::refusal_text(),
            ));
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

pub(super) fn login_failed(state: &AdminState, peer: SocketAddr, why: &str) {
    state.failed_logins.failed(peer.ip(), Instant::now());
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
