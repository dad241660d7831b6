//! The `Host` check: the admin listener answers only to the names it is reached by, an
//! IP address, `localhost`, or a name given with `--admin-host`. A web page open in the
//! operator's browser cannot then reach the listener by making its own name resolve to
//! the listener's address (DNS rebinding, which would let it read `/readyz` and try
//! tokens at `/login` from inside the operator's network): the browser sends the page's
//! name as `Host` and gets 421. A request without `Host` (HTTP/1.0, a script) is not a
//! browser's and is served.

use super::{Peer, Shared};
use crate::net::log_throttle::SharedLine;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::time::Duration;

/// At most one log line per this interval about refused hosts, with their number.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The names the listener answers to besides IP addresses and `localhost`.
#[derive(Debug)]
pub(super) struct AllowedHosts {
    /// Lower case, without a trailing dot.
    names: Vec<String>,
    pub(super) refused_logged: SharedLine,
}

impl AllowedHosts {
    pub(super) fn new(names: &[String]) -> Self {
        AllowedHosts {
            names: names.iter().map(|name| canonical(name)).collect(),
            refused_logged: SharedLine::new(REFUSED_LOG_EVERY),
        }
    }

    /// Whether a request with this `Host` value is served.
    pub(super) fn allows(&self, host: &str) -> bool {
        let name = canonical(without_port(host));
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.names.contains(&name)
    }
}

/// `name` in lower case, without the trailing dot of a fully qualified name.
fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The host of a `Host` value: without `:port`, and an IPv6 literal without brackets.
fn without_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').map_or(host, |(inside, _)| inside);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Refuses a request whose `Host` is not one the listener answers to (421, with what to
/// do about it), before any route sees it.
pub(super) async fn check_host(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let host = match request.headers().get(header::HOST) {
        None => return next.run(request).await,
        Some(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    };
    if state.hosts.allows(&host) {
        return next.run(request).await;
    }
    if let Some(refused) = state.hosts.refused_logged.count() {
        tracing::warn!(
            %peer,
            host = %host.escape_debug(),
            refused,
            "admin: requests for a host this listener does not answer to refused (a browser page's name resolving to this address: DNS rebinding; or a name to allow with --admin-host; at most one line every {} s, with the number since the last)",
            REFUSED_LOG_EVERY.as_secs()
        );
    }
    let name = without_port(&host);
    (
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this admin listener answers to its IP address, localhost, and the names given \
             with --admin-host, not to {name:?}: reach it by one of those, or start the \
             server with --admin-host {}\n",
            name.escape_debug()
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_localhost_and_the_names_given_are_allowed() {
        let hosts = AllowedHosts::new(&["Admin.Example.org.".to_owned()]);
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:443",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:8080",
            "localhost.:80",
            "admin.example.org",
            "ADMIN.example.org:8443",
            "admin.example.org.",
        ] {
            assert!(hosts.allows(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "admin.example.org.attacker.example",
            "example.org",
            "",
            "[::1",
            "127.0.0.1:80:80",
            "sub.localhost",
        ] {
            assert!(!hosts.allows(host), "{host}");
        }
        assert!(!AllowedHosts::new(&[]).allows("admin.example.org"));
    }
}
