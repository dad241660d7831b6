//! The socket layer: the accept loop ([`listener`], its failures: [`accept_errors`]), admission of each connection
//! ([`admission`]), graceful shutdown ([`shutdown`]), a server on its own thread
//! ([`running`]), one task per connection that moves bytes between the socket and the
//! session's [`crate::session::Conversation`] ([`connection`]), opt-in TLS ([`tls`]), and
//! the per-address guards: open connections ([`address_limit`]), registrations and
//! failures ([`rate_limit`]), `--pin-address` ([`address_pin`]), the refused connections'
//! log lines ([`refusals`]; these and the accept failures' at most one per interval:
//! [`log_throttle`]); the PROXY protocol from
//! trusted balancers ([`proxy_protocol`]); the operator's view: the metrics and live
//! state ([`monitor`]) and the admin HTTP listener ([`admin_http`]).

pub(crate) mod accept_errors;
pub(crate) mod address_limit;
pub(crate) mod address_pin;
pub(crate) mod admin_http;
mod admission;
pub(crate) mod connection;
pub(crate) mod entropy;
pub(crate) mod guards;
pub(crate) mod listener;
mod log;
pub(crate) mod log_throttle;
pub(crate) mod monitor;
pub(crate) mod proxy_protocol;
pub(crate) mod rate_limit;
mod read_buffer;
pub(crate) mod refusals;
pub(crate) mod running;
pub(crate) mod shutdown;
pub(crate) mod tls;
pub(crate) mod tls_init;
