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
use std::net::{Ipv4Addr, Ipv6Addr};

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
            refused_logged: SharedLine::new(super::LOG_EVERY),
        }
    }

    /// Whether a request with this `Host` value is served.
    pub(super) fn allows(&self, host: &str) -> bool {
        match split_host(host) {
            Some(Host::Ip) => true,
            Some(Host::Name(name)) => name == "localhost" || self.names.contains(&name),
            None => false,
        }
    }
}

/// What a `Host` value names.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    /// An IPv4 address, or an IPv6 address in brackets.
    Ip,
    /// A name: lower case, without the trailing dot of a fully qualified name.
    Name(String),
}

/// `name` in lower case, without the trailing dot of a fully qualified name.
fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The host of a `Host` value, `host[:port]` (an IPv6 address in brackets, the port
/// digits, possibly none), or `None` when the value is not of that form.
fn split_host(value: &str) -> Option<Host> {
    let (name, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<Ipv6Addr>().ok()?;
            let port = if after.is_empty() {
                after
            } else {
                after.strip_prefix(':')?
            };
            (None, port)
        }
        None => {
            let (name, port) = value.split_once(':').unwrap_or((value, ""));
            (Some(name), port)
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match name {
        None => Some(Host::Ip),
        Some(name) if name.parse::<Ipv4Addr>().is_ok() => Some(Host::Ip),
        Some(name) if !name.is_empty() => Some(Host::Name(canonical(name))),
        Some(_) => None,
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
    // Every name the request gives: its `Host` headers (one, unless it is forged) and
    // the authority of an absolute-form target (`GET http://name/ HTTP/1.1`).
    let mut names: Vec<String> = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    if let Some(authority) = request.uri().authority() {
        let without_user = authority.as_str().rsplit('@').next().unwrap_or_default();
        names.push(without_user.to_owned());
    }
    let several_hosts = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some();
    let refused = if several_hosts {
        Some(names.join(", "))
    } else {
        names.iter().find(|name| !state.hosts.allows(name)).cloned()
    };
    let Some(host) = refused else {
        return next.run(request).await;
    };
    if let Some(refused) = state.hosts.refused_logged.count() {
        tracing::warn!(
            %peer,
            host = %host.escape_debug(),
            refused,
            "admin: requests for a host this listener does not answer to refused (a browser page's name resolving to this address: DNS rebinding; or a name to allow with --admin-host; at most one line every {} s, with the number since the last)",
            super::LOG_EVERY.as_secs()
        );
    }
    let name = match split_host(&host) {
        Some(Host::Name(name)) => name,
        _ => host.clone(),
    };
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
            "localhost:",
            "[::1]:",
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
            "[::1]junk",
            "[::1]:8x",
            "::1",
            "[localhost]",
            ":80",
        ] {
            assert!(!hosts.allows(host), "{host}");
        }
        assert!(!AllowedHosts::new(&[]).allows("admin.example.org"));
    }
}
