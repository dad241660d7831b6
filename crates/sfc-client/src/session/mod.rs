//! The session flow: register or reconnect, key exchange, files, checksum verdicts.
//!
//! - First run: generate the RSA key, 825 → 1600, save me.info and priv.key (atomically)
//!   marked as awaiting the key exchange (me.pending), 826 → 1602, remove the mark. A
//!   failure or Ctrl-C after 1600 thus leaves the identity saved, never a name registered
//!   on the server that this client knows nothing of (rule C10).
//! - Later runs: 827 with the saved ID and name → 1605 (unwrap the new AES key with the
//!   saved private key), or 1606 → register again as a new client (rule C6); with the
//!   mark, 826 with the saved key instead, finishing the registration.
//! - Each file: packets → 1603; equal checksum → 900 → 1604; different → 901 and send
//!   again, at most [`MAX_RESENDS`] times; after the last mismatch 902 → 1604.
//! - 1607 to any request: print `server responded with an error` and send it again, at
//!   most [`MAX_SERVER_ERROR_RETRIES`] times, then fail with a fatal message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sfc_crypto::{AesKey, RsaKeyPair};
use sfc_proto::{ClientId, Name, Request, RequestBody, RequestCode, Response};

use crate::connection::{unexpected, Connection};
use crate::error::{format_duration, ClientError, UnsavedIdentity};
use crate::identity::{self, Identity, IdentityError, START_OVER};
use crate::progress::{Reporter, Verbosity};
use crate::store::{self, IdentityFolder};
use crate::upload::Uploader;

mod transfer;

pub use transfer::FileResult;

/// What the client prints for a 1607 (docs/PROTOCOL.md, rule C8).
pub const SERVER_ERROR_MESSAGE: &str = "server responded with an error";
/// Retries of a request answered with 1607.
pub const MAX_SERVER_ERROR_RETRIES: u32 = 3;
/// The pause before the first retry after a 1607; it doubles for each further retry
/// (0.25 s, 0.5 s, 1 s), giving a server that is briefly short of something time to
/// recover.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Resends of a file after a checksum mismatch (rule C4): 4 sends in all.
pub const MAX_RESENDS: u32 = 3;

/// An established session: we have a client ID and an AES key.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    reporter: Reporter,
    client_id: ClientId,
    name: Name,
    key: AesKey,
    uploader: Uploader,
    registered: bool,
}

/// Sends `request` and returns the reply, retrying on 1607 (at most 3 times).
fn call(
    conn: &mut Connection,
    reporter: &Reporter,
    request: &Request,
) -> Result<Response, ClientError> {
    let bytes = request.encode();
    let code = request.body.code();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let response = conn.round_trip(&bytes)?;
        if response != Response::ServerError {
            return Ok(response);
        }
        let what = code.described().to_string();
        if !retry_after_server_error(reporter, attempts, &what) {
            return Err(ClientError::ServerErrors {
                server: conn.server().to_owned(),
                request: what,
                attempts,
            });
        }
    }
}

/// After the `attempts`-th 1607 to `what`: when a retry is left, says so at `-v` and
/// waits before it (longer each time) and returns true. When the retries are used up,
/// reports every 1607 with the required message (always shown) and returns false. A
/// retry that succeeds thus alarms no one.
pub(crate) fn retry_after_server_error(reporter: &Reporter, attempts: u32, what: &str) -> bool {
    if attempts > MAX_SERVER_ERROR_RETRIES {
        for attempt in 1..=attempts {
            reporter.error(format!(
                "{SERVER_ERROR_MESSAGE} (to {what}, attempt {attempt} of {attempts})"
            ));
        }
        return false;
    }
    let pause = RETRY_BACKOFF.saturating_mul(1 << (attempts - 1).min(8));
    reporter.detail(
        Verbosity::Verbose,
        format!(
            "   {SERVER_ERROR_MESSAGE} (1607 to {what}): retrying in {} (retry {attempts} of \
             {MAX_SERVER_ERROR_RETRIES})",
            format_duration(pause)
        ),
    );
    std::thread::sleep(pause);
    true
}

fn note_client_id(reporter: &Reporter, expected: ClientId, got: ClientId, code: &str) {
    if expected != got {
        reporter.detail(
            Verbosity::Verbose,
            format!("   note: {code} carries client ID {got}, expected {expected}"),
        );
    }
}

impl Session {
    /// Reconnects with the saved identity (827), or registers (825/826) when there is
    /// none or the server answers 1606; a saved identity whose key exchange an earlier run
    /// did not finish sends its key (826) instead. `name` is the configured user name,
    /// used for a new registration; a reconnect uses the saved one.
    pub fn establish(
        mut conn: Connection,
        reporter: Reporter,
        folder: &IdentityFolder,
        name: Option<&Name>,
        saved: Option<Identity>,
    ) -> Result<Session, ClientError> {
        let Some(identity) = saved else {
            let name = name
                .cloned()
                .ok_or_else(|| ClientError::Internal("no user name to register with".to_owned()))?;
            return Self::register(conn, reporter, folder, name, false);
        };
        if folder.key_pending(&identity)? {
            // The server may not have our key: 827 would get 1606, and registering again
            // 1601 (the name is ours). It takes the key of a client with none yet, and the
            // same key again (rules S15, S16).
            reporter.detail(
                Verbosity::Verbose,
                format!(
                    "   client {} was saved before its key exchange: sending the public key \
                     again",
                    identity.client_id
                ),
            );
            return Self::finish_registration(
                conn,
                reporter,
                folder,
                identity,
                KeyExchange::Resumed,
            );
        }
        let reply = call(&mut conn, &reporter, &reconnect_request(&identity))?;
        Self::reconnected(conn, reporter, folder, identity, name, reply)
    }

    /// The server's reply to the 827 of `identity`: 1605 is a session with the key it
    /// wraps; 1606 registers again as a new client named `name` (else the saved name),
    /// the old identity kept as a backup (rule C6).
    fn reconnected(
        conn: Connection,
        reporter: Reporter,
        folder: &IdentityFolder,
        identity: Identity,
        name: Option<&Name>,
        reply: Response,
    ) -> Result<Session, ClientError> {
        match reply {
            Response::ReconnectAccepted {
                client_id,
                wrapped_key,
            } => {
                note_client_id(&reporter, identity.client_id, client_id, "1605");
                let key = identity.keypair.unwrap_aes_key(&wrapped_key).map_err(|e| {
                    ClientError::Protocol {
                        server: conn.server().to_owned(),
                        request: RequestCode::Reconnect.described().to_string(),
                        detail: format!(
                            "sent an AES key that our saved private key cannot unwrap ({e}); \
                             the server may hold a different public key for this client — \
                             {START_OVER}"
                        ),
                    }
                })?;
                if folder.unclaimed {
                    if let Err(e) = folder.claim() {
                        reporter.warn(format!("could not record the server of me.info: {e}"));
                    }
                }
                reporter.info(format!(
                    "reconnected to {} as {:?} (client ID {})",
                    conn.server(),
                    identity.name.as_str(),
                    identity.client_id
                ));
                Ok(Session {
                    conn,
                    reporter,
                    client_id: identity.client_id,
                    name: identity.name,
                    key,
                    uploader: Uploader::new(),
                    registered: false,
                })
            }
            Response::ReconnectRejected { .. } => {
                let name = name.cloned().unwrap_or(identity.name);
                reporter.info(rejected_message(&conn, folder, identity.client_id, &name));
                // The old identity is kept as a backup; the new one must be savable.
                folder.check_writable()?;
                Self::register(conn, reporter, folder, name, true)
            }
            other => Err(unexpected(
                &conn,
                RequestCode::Reconnect,
                &other,
                "1605 (reconnect accepted) or 1606 (reconnect rejected)",
            )),
        }
    }

    fn register(
        mut conn: Connection,
        reporter: Reporter,
        folder: &IdentityFolder,
        name: Name,
        re_registration: bool,
    ) -> Result<Session, ClientError> {
        // Before 825: a key generation that fails or is interrupted leaves no name
        // registered.
        reporter.detail(Verbosity::Verbose, "   generating an RSA-1024 key pair");
        let keypair = RsaKeyPair::generate()
            .map_err(|e| ClientError::Internal(format!("RSA key generation failed: {e}")))?;
        let request = Request::new(ClientId::ZERO, RequestBody::Register { name: name.clone() });
        let client_id = match call(&mut conn, &reporter, &request)? {
            Response::Registered { client_id } => client_id,
            Response::RegistrationFailed => {
                return Err(ClientError::NameTaken {
                    server: conn.server().to_owned(),
                    name: name.as_str().to_owned(),
                    re_registration,
                })
            }
            other => {
                return Err(unexpected(
                    &conn,
                    RequestCode::Register,
                    &other,
                    "1600 (registered) or 1601 (registration failed)",
                ))
            }
        };
        let identity = Identity {
            name,
            client_id,
            keypair,
        };
        // Saved before the key exchange, which anything can cut (the network, a time-out,
        // Ctrl-C): the next run finishes it instead of finding the name taken (1601).
        if let Err(source) = folder.save(&identity) {
            // Sent all the same, so that the identity in the error works once restored.
            let key_sent = exchange_keys(&mut conn, &reporter, &identity).is_ok();
            if key_sent {
                // Best effort: a mark left beside a restored me.info only resends the key.
                let _ = folder.key_exchanged();
            }
            return Err(not_saved(&identity, conn.server(), source, key_sent));
        }
        Self::finish_registration(conn, reporter, folder, identity, KeyExchange::New)
    }

    /// The key exchange (826 → 1602) of an identity saved as awaiting it (me.pending),
    /// just registered or left so by an earlier run; then the mark goes. A failure says
    /// that the identity is kept and the next run tries again.
    fn finish_registration(
        mut conn: Connection,
        reporter: Reporter,
        folder: &IdentityFolder,
        identity: Identity,
        exchange: KeyExchange,
    ) -> Result<Session, ClientError> {
        let me_info = display_path(&folder.dir, identity::ME_INFO);
        let client_id = identity.client_id;
        let server = conn.server().to_owned();
        let saved_name = identity.name.as_str().to_owned();
        let unfinished = |source: ClientError| ClientError::RegistrationUnfinished {
            source: Box::new(source),
            server: server.clone(),
            name: saved_name.clone(),
            client_id: client_id.to_hex(),
            me_info: me_info.clone(),
        };
        reporter.set_interrupt_note(Some(format!(
            "the registration of client ID {client_id} is saved in {} but not finished: the \
             next run sends its public key (826) again to finish it",
            me_info.display()
        )));
        let exchanged = exchange_keys(&mut conn, &reporter, &identity);
        let key = match (exchanged, exchange) {
            (Ok(key), _) => key,
            // A server that no longer knows the client (its database replaced, or restored
            // from before the 1600) refuses the 826 so (rule S15), and would on every run.
            (Err(ClientError::ServerErrors { .. }), KeyExchange::Resumed) => {
                // The note holds until the 1600 of a new registration, which sets its own.
                let noted = reporter.clone();
                let result = Self::after_refused_key(conn, reporter, folder, identity, &unfinished);
                noted.set_interrupt_note(None);
                return result;
            }
            (Err(source), _) => {
                reporter.set_interrupt_note(None);
                return Err(unfinished(source));
            }
        };
        reporter.set_interrupt_note(None);
        let session = Session {
            conn,
            reporter,
            client_id,
            name: identity.name,
            key,
            uploader: Uploader::new(),
            registered: true,
        };
        session.record_key_exchanged(folder);
        let server = session.conn.server();
        let name = session.name.as_str();
        session.reporter.info(match exchange {
            KeyExchange::New => format!(
                "registered with {server} as {name:?}: client ID {client_id}; saved {} and {}",
                me_info.display(),
                display_path(&folder.dir, identity::PRIV_KEY).display()
            ),
            KeyExchange::Resumed => format!(
                "finished the registration an earlier run began: {server} has the public key \
                 of {name:?} (client ID {client_id}) now"
            ),
        });
        Ok(session)
    }

    /// The saved key of an unfinished registration refused (1607 after the retries), as a
    /// server that no longer knows the client refuses it. 827 tells: 1605 is a session,
    /// the registration done (a server that had the key and refuses a second 826). 1606
    /// is either a server that no longer knows the client or one that holds it with no
    /// key (and could not store one just now): registering the saved name again tells
    /// them apart. 1600: it had forgotten the client, whose identity is kept as a backup.
    /// 1601: nothing is replaced, and the registration stays unfinished (`unfinished`
    /// makes its error).
    fn after_refused_key(
        mut conn: Connection,
        reporter: Reporter,
        folder: &IdentityFolder,
        identity: Identity,
        unfinished: &dyn Fn(ClientError) -> ClientError,
    ) -> Result<Session, ClientError> {
        let client_id = identity.client_id;
        reporter.detail(
            Verbosity::Verbose,
            format!(
                "   the server refused the public key of client {client_id}: asking (827) \
                 whether it still knows the client"
            ),
        );
        let reply =
            call(&mut conn, &reporter, &reconnect_request(&identity)).map_err(unfinished)?;
        if !matches!(reply, Response::ReconnectRejected { .. }) {
            let session = Self::reconnected(conn, reporter, folder, identity, None, reply)
                .map_err(unfinished)?;
            // 1605: the server has this key on record after all.
            session.record_key_exchanged(folder);
            return Ok(session);
        }
        folder.check_writable().map_err(|e| unfinished(e.into()))?;
        reporter.info(format!(
            "{} refused the public key of client {client_id} and answers 827 with 1606: it no \
             longer knows the client, or holds it with no key; registering {:?} again tells \
             which",
            conn.server(),
            identity.name.as_str()
        ));
        let server = conn.server().to_owned();
        match Self::register(conn, reporter, folder, identity.name, true) {
            Err(ClientError::NameTaken { .. }) => Err(unfinished(ClientError::Rejected {
                server,
                request: RequestCode::SendPublicKey.described().to_string(),
                detail: "it answered 1607 to our saved public key, 1606 to 827 (reconnect) and \
                         1601 to registering the saved name again: it holds this client with \
                         no key and could not store one, or it no longer knows the client and \
                         another has taken the name"
                    .to_owned(),
            })),
            // From the 1600 on, errors are the new registration's own.
            Err(
                after @ (ClientError::RegistrationUnfinished { .. }
                | ClientError::IdentityNotSaved(_)),
            ) => Err(after),
            Err(before) => Err(unfinished(before)),
            Ok(session) => Ok(session),
        }
    }

    /// Removes the mark of an unfinished key exchange (me.pending), now that the server has
    /// this session's key; a failure is only a warning.
    fn record_key_exchanged(&self, folder: &IdentityFolder) {
        if let Err(e) = folder.key_exchanged() {
            self.reporter.warn(format!(
                "could not record that the key exchange is done ({e}); the next run sends the \
                 public key again, which the server accepts"
            ));
        }
    }

    /// Waits for a save of the identity files in progress (me.info, priv.key, me.server,
    /// backups) to finish and keeps new ones from starting while the guard lives: hold it
    /// while ending the process on Ctrl-C, so that a save is never cut in the middle. Call
    /// it from another thread than the one running the session (a Ctrl-C handler's).
    /// Waits at most `limit`: `None` when the save is still running then (hung, e.g. on an
    /// unreachable network mount), and the files it was writing may be incomplete.
    pub fn hold_identity_saves_within(
        limit: Duration,
    ) -> Option<std::sync::MutexGuard<'static, ()>> {
        store::hold_identity_writes_within(limit)
    }

    /// Our client ID.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The user name of this session.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// True when this session registered a new client (825/826).
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// The connection (for its mode and address).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn expect_ack(&mut self, request: &Request) -> Result<(), ClientError> {
        match call(&mut self.conn, &self.reporter, request)? {
            Response::Ack { client_id } => {
                if let Some(id) = client_id {
                    note_client_id(&self.reporter, self.client_id, id, "1604");
                }
                Ok(())
            }
            other => Err(unexpected(
                &self.conn,
                request.body.code(),
                &other,
                "1604 (acknowledged)",
            )),
        }
    }

    /// Ends the session (closes the connection).
    pub fn close(mut self) {
        self.conn.close();
    }
}

/// Which key exchange [`Session::finish_registration`] finishes.
#[derive(Clone, Copy)]
enum KeyExchange {
    /// That of the identity just registered (825 → 1600).
    New,
    /// That of an identity an earlier run saved before it.
    Resumed,
}

/// 827 for a saved identity.
fn reconnect_request(identity: &Identity) -> Request {
    Request::new(
        identity.client_id,
        RequestBody::Reconnect {
            name: identity.name.clone(),
        },
    )
}

/// What a 1606 means here: the server forgot us, or (for an identity borrowed from me.info
/// for another address) it never knew us.
fn rejected_message(
    conn: &Connection,
    folder: &IdentityFolder,
    client_id: ClientId,
    name: &Name,
) -> String {
    if folder.nested {
        format!(
            "{} does not know client {client_id} of me.info (reply 1606): registering with it \
             as a new client named {:?}; me.info stays as it is, this server's identity goes \
             to {}",
            conn.server(),
            name.as_str(),
            folder.dir.display()
        )
    } else {
        format!(
            "the server no longer knows client {client_id} (reply 1606): registering again as \
             a new client named {:?}",
            name.as_str()
        )
    }
}

/// 826 → 1602: sends our public key and unwraps the AES key the server returns.
fn exchange_keys(
    conn: &mut Connection,
    reporter: &Reporter,
    identity: &Identity,
) -> Result<AesKey, ClientError> {
    let Identity {
        name,
        client_id,
        keypair,
    } = identity;
    let client_id = *client_id;
    let request = Request::new(
        client_id,
        RequestBody::SendPublicKey {
            name: name.clone(),
            public_key: keypair.public_key_der(),
        },
    );
    match call(conn, reporter, &request)? {
        Response::PublicKeyAccepted {
            client_id: echoed,
            wrapped_key,
        } => {
            note_client_id(reporter, client_id, echoed, "1602");
            keypair
                .unwrap_aes_key(&wrapped_key)
                .map_err(|e| ClientError::Protocol {
                    server: conn.server().to_owned(),
                    request: RequestCode::SendPublicKey.described().to_string(),
                    detail: format!("sent an AES key that our private key cannot unwrap ({e})"),
                })
        }
        Response::RegistrationFailed => Err(ClientError::Rejected {
            server: conn.server().to_owned(),
            request: RequestCode::SendPublicKey.described().to_string(),
            detail: "it answered 1601 (registration failed) to our public key".to_owned(),
        }),
        other => Err(unexpected(
            conn,
            RequestCode::SendPublicKey,
            &other,
            "1602 (public key accepted)",
        )),
    }
}

/// The error for a new identity that could not be saved (`source`): puts the key in a
/// fallback file and names the identity, so that a registered name is never lost
/// silently. `key_sent`: the key exchange was completed all the same.
fn not_saved(
    identity: &Identity,
    server: &str,
    source: IdentityError,
    key_sent: bool,
) -> ClientError {
    let (key_file, key_text) = match store::save_fallback(identity) {
        Ok(path) => (Some(path), None),
        Err(_) => (
            None,
            identity.keypair.to_base64().ok().map(|k| k.to_string()),
        ),
    };
    ClientError::IdentityNotSaved(Box::new(UnsavedIdentity {
        server: server.to_owned(),
        name: identity.name.as_str().to_owned(),
        client_id: identity.client_id.to_hex(),
        key_file,
        key_text,
        key_sent,
        source,
    }))
}

fn display_path(dir: &Path, file: &str) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(file)
    } else {
        dir.join(file)
    }
}
