//! The client's error type and its mapping to process exit codes.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::config::ConfigError;
use crate::identity::IdentityError;

/// Process exit codes. Documented in `--help` and the README; tests rely on them.
pub mod exit {
    /// Every file was stored and its checksum confirmed.
    pub const OK: u8 = 0;
    /// Internal error (a bug, a local disk that cannot be written, key generation failed).
    pub const INTERNAL: u8 = 1;
    /// Bad input or usage: transfer.info, flags, me.info/priv.key, a file that cannot be
    /// read or is too large for the protocol, a folder another run is using. Nothing was
    /// sent (or nothing more).
    pub const BAD_INPUT: u8 = 2;
    /// The server rejected us: name taken (1601), or it answered 1607 to the same request
    /// four times (once plus three retries).
    pub const REJECTED: u8 = 3;
    /// At least one file's checksum still differed after 3 resends (902 was sent).
    pub const CHECKSUM: u8 = 4;
    /// Network failure: connection refused, reset, timed out, host not found; a TLS
    /// handshake that fails (untrusted certificate, a server not speaking TLS).
    pub const NETWORK: u8 = 5;
    /// The server broke the protocol: a reply this client cannot accept.
    pub const PROTOCOL: u8 = 6;
    /// Interrupted with Ctrl-C (SIGINT), as shells report a process ended by it.
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that ends a run early (or makes it fail at the end).
#[derive(Debug, Error)]
pub enum ClientError {
    /// transfer.info or a flag is wrong.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// me.info or priv.key cannot be read or written.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// A file to send cannot be used (unreadable, too large, changed while sending).
    #[error("{}: {reason}", path.display())]
    File {
        /// The file as given.
        path: PathBuf,
        /// Why it cannot be sent.
        reason: String,
    },
    /// The server registered us but the identity could not be saved where it belongs.
    #[error("{0}")]
    IdentityNotSaved(Box<UnsavedIdentity>),
    /// The server registered us (1600) and the identity is saved, but the key exchange
    /// (826 → 1602) failed; the next run sends the key again.
    #[error(
        "{source}. The registration of {name:?} with {server} (client ID {client_id}) is \
         saved in {me_info} but not finished: the next run sends its public key (826) \
         again to finish it{}",
        if matches!(**.source, ClientError::Rejected { .. }) {
            format!(
                " (if the server no longer knows client {client_id}, {})",
                crate::identity::START_OVER
            )
        } else {
            String::new()
        }
    )]
    RegistrationUnfinished {
        /// Why the key exchange failed; its exit code is this error's.
        source: Box<ClientError>,
        /// The server address.
        server: String,
        /// The registered name.
        name: String,
        /// The client ID the server assigned (32 hex digits).
        client_id: String,
        /// Where the identity is saved (me.info).
        me_info: PathBuf,
    },
    /// The server refused to register the name (1601).
    #[error(
        "the server at {server} refused to register the name {name:?} (reply 1601){}: the name is \
         already taken, or the server does not accept it. Choose another name with --name or on \
         line 2 of transfer.info",
        if *.re_registration { " while registering again after it had forgotten this client (1606)" } else { "" }
    )]
    NameTaken {
        /// The server address.
        server: String,
        /// The name we asked for.
        name: String,
        /// True when this registration followed a 1606.
        re_registration: bool,
    },
    /// The server refused something else outright (e.g. 1601 to our public key).
    #[error("the server at {server} rejected request {request}: {detail}")]
    Rejected {
        /// The server address.
        server: String,
        /// The request, e.g. `826 (send public key)`.
        request: String,
        /// What it answered.
        detail: String,
    },
    /// 1607 to every try of a request.
    #[error(
        "fatal: the server at {server} answered request {request} with 1607 (general server \
         error) {attempts} times: sent once and retried {retries} times; giving up",
        retries = attempts.saturating_sub(1)
    )]
    ServerErrors {
        /// The server address.
        server: String,
        /// The request, e.g. `826 (send public key)`.
        request: String,
        /// How often it was sent.
        attempts: u32,
    },
    /// One or more files whose checksum never matched.
    #[error(
        "checksum mismatch after {attempts} sends (902 sent, the server discards them): {}",
        files.join(", ")
    )]
    ChecksumFailed {
        /// Labels of the files that failed.
        files: Vec<String>,
        /// Sends per file (4).
        attempts: u32,
    },
    /// The network failed.
    #[error("{0}")]
    Network(#[from] NetworkError),
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol error: the server at {server} {detail} (while handling request {request})")]
    Protocol {
        /// The server address.
        server: String,
        /// The request being handled.
        request: String,
        /// What was wrong.
        detail: String,
    },
    /// Anything else: a bug or a local failure that is not the user's input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// The private key of a registration that could not be saved anywhere, not even to a
    /// fallback file: whoever reports this error prints it once, to standard error. It is
    /// never part of the message, which also becomes every file's `reason` (`--json`).
    pub fn unsaved_private_key(&self) -> Option<&str> {
        match self {
            ClientError::IdentityNotSaved(unsaved) => unsaved.key_text.as_deref(),
            _ => None,
        }
    }

    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Config(_) | ClientError::File { .. } => exit::BAD_INPUT,
            ClientError::Identity(e) => {
                if e.is_bad_input() {
                    exit::BAD_INPUT
                } else {
                    exit::INTERNAL
                }
            }
            ClientError::NameTaken { .. }
            | ClientError::Rejected { .. }
            | ClientError::ServerErrors { .. } => exit::REJECTED,
            ClientError::ChecksumFailed { .. } => exit::CHECKSUM,
            ClientError::Network(_) => exit::NETWORK,
            ClientError::Protocol { .. } => exit::PROTOCOL,
            ClientError::Internal(_) | ClientError::IdentityNotSaved(_) => exit::INTERNAL,
            ClientError::RegistrationUnfinished { source, .. } => source.exit_code(),
        }
    }
}

/// A registration whose identity could not be saved: everything needed to keep it. The
/// message never holds the key itself (see [`ClientError::unsaved_private_key`]).
#[derive(Error)]
#[error(
    "registered with {server} as {name:?} (client ID {client_id}), but the identity could \
     not be saved: {source}. {}{}",
    match (key_file, key_text) {
        (Some(file), _) => format!(
            "The private key was saved to {}: to keep this identity, write me.info (line 1 \
             {name}, line 2 {client_id}, line 3 the contents of that file) and copy the \
             file to priv.key in the client's folder",
            file.display()
        ),
        (None, Some(_)) => format!(
            "It could not be saved anywhere else either; to keep it, write me.info with \
             line 1 {name}, line 2 {client_id}, line 3 the private key printed on its own \
             after this message"
        ),
        (None, None) => "The private key is lost; register under another name".to_owned(),
    },
    if *key_sent || (key_file.is_none() && key_text.is_none()) {
        String::new()
    } else {
        format!(
            ". The server did not receive the public key either: also write {} holding \
             {client_id}, so that the next run sends it",
            crate::store::ME_PENDING
        )
    }
)]
pub struct UnsavedIdentity {
    /// The server address.
    pub server: String,
    /// The registered name.
    pub name: String,
    /// The client ID the server assigned (32 hex digits).
    pub client_id: String,
    /// Where the private key was written instead.
    pub key_file: Option<PathBuf>,
    /// The key itself (base64), when no file could be written at all.
    pub key_text: Option<String>,
    /// True when the key exchange (826 → 1602) was completed all the same.
    pub key_sent: bool,
    /// Why saving failed.
    #[source]
    pub source: IdentityError,
}

/// Without the key: a `{:?}` in a log or a panic message must not reveal it either.
impl fmt::Debug for UnsavedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsavedIdentity")
            .field("server", &self.server)
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("key_file", &self.key_file)
            .field("key_text", &self.key_text.as_ref().map(|_| "(withheld)"))
            .field("key_sent", &self.key_sent)
            .field("source", &self.source)
            .finish()
    }
}

/// A network failure, in plain words, with the server address and what we were doing.
#[derive(Debug, Error)]
#[error("network failure talking to {server} while {during}: {}", plain_words(.source, .timeout))]
pub struct NetworkError {
    /// The server address as configured.
    pub server: String,
    /// What we were doing, e.g. "connecting" or "waiting for the reply to 826 (send public key)".
    pub during: String,
    /// The timeout in force for this step, used in the message of a time-out.
    pub timeout: Option<Duration>,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn plain_words(error: &io::Error, timeout: &Option<Duration>) -> String {
    use io::ErrorKind as K;
    let within = timeout
        .map(|t| format!(" within {}", format_duration(t)))
        .unwrap_or_default();
    match error.kind() {
        K::ConnectionRefused => {
            "connection refused: nothing is listening there (is the server running, and is the \
             port right?)"
                .to_owned()
        }
        // The connection words its own time-outs (which limit they hit, and how).
        K::TimedOut | K::WouldBlock if error.get_ref().is_some() => error.to_string(),
        K::TimedOut | K::WouldBlock => format!("no answer{within} (timed out)"),
        K::ConnectionReset if error.get_ref().is_some() => error.to_string(),
        K::ConnectionReset => "the connection was reset by the server".to_owned(),
        K::ConnectionAborted => "the connection was aborted".to_owned(),
        K::BrokenPipe => "the server closed the connection".to_owned(),
        K::UnexpectedEof if error.get_ref().is_some() => error.to_string(),
        K::UnexpectedEof => "the server closed the connection in the middle of a reply".to_owned(),
        K::NotConnected => "the connection is not open".to_owned(),
        K::AddrNotAvailable => "the address is not available on this machine".to_owned(),
        K::HostUnreachable => "the host is unreachable".to_owned(),
        K::NetworkUnreachable => "the network is unreachable".to_owned(),
        K::NotFound => format!("host name not found ({error})"),
        _ => error.to_string(),
    }
}

/// "10 s", "1.5 s", "250 ms".
pub fn format_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::unsaved_identity;

    #[test]
    fn network_errors_are_in_plain_words() {
        let e = NetworkError {
            server: "127.0.0.1:9".into(),
            during: "connecting".into(),
            timeout: Some(Duration::from_secs(10)),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:9"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        let e = NetworkError {
            source: io::Error::from(io::ErrorKind::TimedOut),
            ..e
        };
        assert!(e.to_string().contains("no answer within 10 s"));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250 ms");
    }

    /// The message of an unsaved identity reaches every file's `reason` (`--json`): the
    /// key stays out of it (and out of `{:?}`), and is there for the one who reports it.
    #[test]
    fn an_unsaved_private_key_is_never_part_of_the_message() {
        let key = "MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAL-secret-key";
        let error = unsaved_identity(key);
        let text = error.to_string();
        assert!(!text.contains(key), "{text}");
        assert!(!format!("{error:?}").contains(key));
        assert!(text.contains("00112233445566778899aabbccddeeff"), "{text}");
        assert!(text.contains("printed on its own"), "{text}");
        assert_eq!(error.unsaved_private_key(), Some(key));
        assert_eq!(
            ClientError::Internal("x".into()).unsaved_private_key(),
            None
        );
    }

    /// A registration whose key exchange failed keeps the exit code of the failure, and
    /// says which client is saved and what the next run does; after a 1601, also how to
    /// start over.
    #[test]
    fn an_unfinished_registration_names_the_client_and_the_next_step() {
        let unfinished = |source: ClientError| ClientError::RegistrationUnfinished {
            source: Box::new(source),
            server: "h:1".into(),
            name: "una".into(),
            client_id: "00112233445566778899aabbccddeeff".into(),
            me_info: "me.info".into(),
        };
        let cut = unfinished(ClientError::Network(NetworkError {
            server: "h:1".into(),
            during: "waiting for the reply to request 826 (send public key)".into(),
            timeout: Some(Duration::from_secs(60)),
            source: io::Error::from(io::ErrorKind::TimedOut),
        }));
        assert_eq!(cut.exit_code(), exit::NETWORK);
        let text = cut.to_string();
        assert!(text.starts_with("network failure talking to h:1"), "{text}");
        assert!(text.contains("00112233445566778899aabbccddeeff"), "{text}");
        assert!(
            text.contains("the next run sends its public key (826) again"),
            "{text}"
        );
        assert!(!text.contains("no longer knows"), "{text}");

        let refused = unfinished(ClientError::ServerErrors {
            server: "h:1".into(),
            request: "826 (send public key)".into(),
            attempts: 4,
        });
        assert_eq!(refused.exit_code(), exit::REJECTED);
        let text = refused.to_string();
        assert!(text.starts_with("fatal:"), "{text}");
        // 1607s: the next run asks with 827 whether the server still knows the client.
        assert!(!text.contains("no longer knows client"), "{text}");

        let rejected = unfinished(ClientError::Rejected {
            server: "h:1".into(),
            request: "826 (send public key)".into(),
            detail: "it answered 1601 (registration failed) to our public key".into(),
        });
        assert_eq!(rejected.exit_code(), exit::REJECTED);
        assert!(
            rejected.to_string().contains("no longer knows client"),
            "{rejected}"
        );
    }

    /// An identity that could not be saved and whose key the server did not get either:
    /// restoring it needs me.pending too, so that the next run sends the key.
    #[test]
    fn an_unsaved_identity_without_its_key_exchange_says_to_write_me_pending() {
        let mut error = unsaved_identity("k");
        if let ClientError::IdentityNotSaved(unsaved) = &mut error {
            unsaved.key_sent = false;
        }
        let text = error.to_string();
        assert!(text.contains("also write me.pending"), "{text}");
        assert!(!unsaved_identity("k").to_string().contains("me.pending"));
    }

    #[test]
    fn exit_codes_are_distinct_per_category() {
        let server = || "h:1".to_owned();
        let codes = [
            ClientError::File {
                path: "x".into(),
                reason: "r".into(),
            }
            .exit_code(),
            ClientError::NameTaken {
                server: server(),
                name: "n".into(),
                re_registration: true,
            }
            .exit_code(),
            ClientError::ChecksumFailed {
                files: vec!["f".into()],
                attempts: 4,
            }
            .exit_code(),
            ClientError::Network(NetworkError {
                server: server(),
                during: "x".into(),
                timeout: None,
                source: io::Error::other("x"),
            })
            .exit_code(),
            ClientError::Protocol {
                server: server(),
                request: "r".into(),
                detail: "d".into(),
            }
            .exit_code(),
            ClientError::Internal("x".into()).exit_code(),
        ];
        assert_eq!(codes, [2, 3, 4, 5, 6, 1]);
        let busy = ClientError::Identity(IdentityError::Busy {
            dir: "/x".into(),
            lock: ".sfc-client.lock",
        });
        assert_eq!(busy.exit_code(), 2);
        let fatal = ClientError::ServerErrors {
            server: server(),
            request: "826 (send public key)".into(),
            attempts: 4,
        };
        assert_eq!(fatal.exit_code(), 3);
        let text = fatal.to_string();
        assert!(text.contains("826 (send public key)") && text.contains("h:1"));
        assert!(text.contains("retried 3 times"), "{text}");
    }
}
