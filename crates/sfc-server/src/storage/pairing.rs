//! The set-up ID: one random ID kept both in the database and with the stored files, so
//! that a server started on a database and a file store that do not belong together
//! refuses to start instead of serving (and cleaning up) the wrong files.
//!
//! Start-up recovery removes stored files that no row names. On a mismatched pair (a node
//! started without its `--database` on a shared bucket gets a new, empty `defensive.db`;
//! a wrong `--data-dir` or `--store`) every stored file looks unrecorded;
//! [`super::recover`]'s guards only guess at that. The ID makes it a certainty:
//!
//! | database | file store | what happens |
//! |---|---|---|
//! | X | X | paired |
//! | X | Y | refused: they belong to different set-ups |
//! | none | X | refused: the store belongs to a database this is not |
//! | X | none | the store gets X (a new store, or one from before set-up IDs) |
//! | none | none | a new ID is recorded in the database, then in the store; unless the database has no client and the store holds files: then neither gets one ([`Paired::Unclaimed`]) |
//!
//! The database is written first and is the arbiter: servers starting at once on one
//! database and one store each propose an ID, the first recorded wins
//! ([`MetaStore::record_setup_id`]), and all of them write that one to the store. The store
//! is read before the database, so a store that has an ID always has it from a database
//! that had it already: "none | X" never comes from a start-up cut short, or from another
//! server starting at the same time. The store's ID is only ever created, never replaced
//! ([`BlobStore::keep_setup_id`]: an S3 `PUT` with `If-None-Match: *`, a hard link in a
//! folder): of servers on different databases starting at once on a store without an ID,
//! one gives it its ID and the others are refused.

use super::setup::MAX_ORPHANS_REMOVED;
use super::{BlobStore, MetaStore};
use anyhow::Context;

/// Where the store keeps the set-up ID, relative to its root (the data folder, a
/// `file://` folder or the S3 prefix): beside `files/`, which holds only client folders.
pub const SETUP_ID_PATH: &str = "sfc-setup-id";

/// The database's table of the set-up ID (one row), valid SQL for SQLite and PostgreSQL.
///
/// Made when an ID is first recorded, not by a schema migration: servers of an older
/// version sharing the database ignore the table, where a new schema version would stop
/// them at their next start, so the nodes of a cluster can be upgraded one at a time.
pub const SETUP_TABLE: &str = "CREATE TABLE IF NOT EXISTS sfc_setup (
    singleton integer PRIMARY KEY CHECK (singleton = 1),
    id text NOT NULL
)";

/// What [`pair`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Paired {
    /// Both held this ID.
    Matched(String),
    /// The database held this ID and the store none; the store has it now.
    StoreAdopted(String),
    /// Neither held one; this ID is now in both.
    New(String),
    /// Neither held one, and none was given: the database has no client while the store
    /// holds files (a new database beside the files of an older set-up, say a node
    /// started without its `--database` during an upgrade). Claiming the store for it
    /// would lock out the database the files belong to.
    Unclaimed {
        /// Stored files found.
        stored: usize,
    },
}

/// Checks that `meta` and `blobs` belong to one set-up, recording a new ID where there is
/// none (see the module docs); `proposed` is the ID to record in a new set-up, and
/// `location` says where the store keeps its ID (for the messages).
pub fn pair(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    proposed: &str,
    location: &str,
) -> anyhow::Result<Paired> {
    let in_store = blobs
        .setup_id()
        .with_context(|| format!("cannot read the file store's set-up ID ({location}): restore the file, or delete it to have the database's written again"))?;
    let db_error = |what: &str, error: super::StoreError| {
        anyhow::anyhow!("cannot {what} the database's set-up ID: {error}")
    };
    let in_database = meta.setup_id().map_err(|error| db_error("read", error))?;
    let fix = format!(
        "start with the database and the file store that belong together (check --database, \
         --data-dir and --store); to give this file store to this database anyway, delete \
         {location} (the next start then removes up to {MAX_ORPHANS_REMOVED} stored files \
         that no row of this database names)"
    );
    let differ = |database: &str, store: &str| {
        anyhow::anyhow!(
            "the database (set-up {database}) and the file store (set-up {store}) belong to \
             different set-ups: {fix}"
        )
    };
    // The store keeps `id` unless another server, on another database, gave it its own
    // meanwhile.
    let give_to_store = |id: &str| -> anyhow::Result<()> {
        let kept = blobs.keep_setup_id(id).with_context(|| {
            format!("cannot write the set-up ID to the file store ({location})")
        })?;
        if kept == id {
            Ok(())
        } else {
            Err(differ(id, &kept))
        }
    };
    match (in_database, in_store) {
        (Some(database), Some(store)) if database == store => Ok(Paired::Matched(database)),
        (Some(database), Some(store)) => Err(differ(&database, &store)),
        (None, Some(store)) => Err(anyhow::anyhow!(
            "the file store belongs to set-up {store}, but the database has no set-up ID (a \
             new database, one restored from before set-up IDs, or another server claimed the \
             store with another database: its log says \"new set-up\" with that ID): {fix}"
        )),
        (Some(database), None) => {
            give_to_store(&database)?;
            Ok(Paired::StoreAdopted(database))
        }
        (None, None) => {
            let no_client = meta
                .clients()
                .map_err(|error| db_error("check", error))?
                .is_empty();
            if no_client {
                let stored = blobs
                    .stored_paths()
                    .context("cannot list the file store")?
                    .len();
                if stored > 0 {
                    return Ok(Paired::Unclaimed { stored });
                }
            }
            let recorded = meta
                .record_setup_id(proposed)
                .map_err(|error| db_error("record", error))?;
            give_to_store(&recorded)?;
            // Another server starting at once may have recorded its own first.
            if recorded == proposed {
                Ok(Paired::New(recorded))
            } else {
                Ok(Paired::StoreAdopted(recorded))
            }
        }
    }
}

/// What [`BlobStore::keep_setup_id`] returns when the ID was there already (its create
/// failed): the ID kept, read back.
pub fn already_kept(read_back: std::io::Result<Option<String>>) -> std::io::Result<String> {
    read_back?.ok_or_else(|| std::io::Error::other("the set-up ID was there, then gone"))
}

/// The set-up ID in the bytes a store kept ([`SETUP_ID_PATH`]): one line of 1 to 64
/// letters, digits or `-`. Anything else is an error, not "no ID": a damaged file must not
/// let a store be taken over.
pub fn parse_kept(bytes: &[u8]) -> std::io::Result<String> {
    let text = std::str::from_utf8(bytes)
        .unwrap_or("")
        .trim_end_matches(['\n', '\r']);
    let valid = (1..=64).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(damaged())
    }
}

/// The error for a kept ID that is not one.
pub fn damaged() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{SETUP_ID_PATH} does not hold a set-up ID (damaged?)"),
    )
}

/// What a store keeps for `id`: the ID and a line end.
pub fn kept(id: &str) -> Vec<u8> {
    format!("{id}\n").into_bytes()
}

/// A new random set-up ID (32 hex digits).
pub fn new_setup_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::MemoryStorage;
    use crate::storage::Timestamp;
    use sfc_proto::ClientId;
    use std::sync::atomic::Ordering;

    const LOCATION: &str = "/srv/sfc/sfc-setup-id";

    fn start(storage: &MemoryStorage, proposed: &str) -> anyhow::Result<Paired> {
        pair(&storage.meta(), &storage.blobs(), proposed, LOCATION)
    }

    fn both(storage: &MemoryStorage) -> (Option<String>, Option<String>) {
        (
            storage.meta().setup_id().unwrap(),
            storage.blobs().setup_id().unwrap(),
        )
    }

    fn some(a: &str, b: &str) -> (Option<String>, Option<String>) {
        (Some(a.to_owned()), Some(b.to_owned()))
    }

    /// Reads of both IDs see none, as reads just before another server wrote them do.
    fn reads_unseen(storage: &MemoryStorage, unseen: bool) {
        storage
            .faults()
            .setup_id_unseen
            .store(unseen, Ordering::SeqCst);
    }

    #[test]
    fn a_new_set_up_records_the_id_in_both_and_later_starts_match() {
        let storage = MemoryStorage::new();
        assert_eq!(start(&storage, "a1").unwrap(), Paired::New("a1".into()));
        assert_eq!(both(&storage), some("a1", "a1"));
        // The next start proposes another ID; the recorded one stays.
        assert_eq!(start(&storage, "b2").unwrap(), Paired::Matched("a1".into()));
        assert_eq!(both(&storage), some("a1", "a1"));
    }

    #[test]
    fn a_store_without_an_id_takes_the_databases() {
        let storage = MemoryStorage::new();
        storage.meta().record_setup_id("a1").unwrap();
        let paired = start(&storage, "b2").unwrap();
        assert_eq!(paired, Paired::StoreAdopted("a1".into()));
        assert_eq!(both(&storage), some("a1", "a1"));
    }

    #[test]
    fn another_servers_id_recorded_first_wins() {
        let storage = MemoryStorage::new();
        // Another server on this database recorded its ID after this one read.
        storage.meta().record_setup_id("other").unwrap();
        reads_unseen(&storage, true);
        let paired = start(&storage, "mine").unwrap();
        assert_eq!(paired, Paired::StoreAdopted("other".into()));
        reads_unseen(&storage, false);
        assert_eq!(both(&storage), some("other", "other"));
    }

    #[test]
    fn a_store_given_another_id_meanwhile_is_refused_not_overwritten() {
        let storage = MemoryStorage::new();
        // A server on another database gave the store its ID after this one read it.
        storage.blobs().keep_setup_id("theirs").unwrap();
        reads_unseen(&storage, true);
        let error = start(&storage, "mine").unwrap_err();
        reads_unseen(&storage, false);
        let text = format!("{error:#}");
        assert!(text.contains("different set-ups"), "{text}");
        assert_eq!(both(&storage), some("mine", "theirs"));
    }

    #[test]
    fn a_database_without_clients_does_not_claim_a_store_holding_files() {
        let storage = MemoryStorage::new();
        let client = ClientId([7; 16]);
        let mut file = storage.blobs().create_temp(&client, "old.bin").unwrap();
        file.write_all(b"an older set-up's").unwrap();
        file.persist().unwrap();
        assert_eq!(
            start(&storage, "a1").unwrap(),
            Paired::Unclaimed { stored: 1 }
        );
        assert_eq!(both(&storage), (None, None));
        // The database the files belong to (it has clients) claims it.
        storage
            .meta()
            .insert_client(&client, "owner", Timestamp(0))
            .unwrap();
        assert_eq!(start(&storage, "b2").unwrap(), Paired::New("b2".into()));
        assert_eq!(both(&storage), some("b2", "b2"));
    }

    #[test]
    fn mismatched_stores_are_refused_and_left_as_they_were() {
        let storage = MemoryStorage::new();
        storage.meta().record_setup_id("a1").unwrap();
        storage.blobs().keep_setup_id("b2").unwrap();
        let text = format!("{:#}", start(&storage, "c3").unwrap_err());
        assert!(
            text.contains("set-up a1") && text.contains("set-up b2"),
            "{text}"
        );
        assert!(text.contains(&format!("delete {LOCATION}")), "{text}");
        assert!(text.contains("up to 64 stored files"), "{text}");
        assert_eq!(both(&storage), some("a1", "b2"));
    }

    #[test]
    fn a_new_database_on_a_store_of_another_set_up_is_refused() {
        let storage = MemoryStorage::new();
        storage.blobs().keep_setup_id("b2").unwrap();
        let text = format!("{:#}", start(&storage, "c3").unwrap_err());
        assert!(text.contains("no set-up ID"), "{text}");
        assert!(text.contains(LOCATION), "{text}");
        assert_eq!(both(&storage), (None, Some("b2".into())));
    }

    #[test]
    fn a_failed_write_to_the_store_stops_the_start_and_the_next_finishes_it() {
        let storage = MemoryStorage::new();
        // The database records; the store's write is the next durable step, and fails.
        storage.faults().crash_after(1);
        let text = format!("{:#}", start(&storage, "a1").unwrap_err());
        assert!(text.contains("cannot write the set-up ID"), "{text}");
        assert!(text.contains(LOCATION), "{text}");
        storage.faults().heal();
        assert_eq!(both(&storage), (Some("a1".into()), None));
        let paired = start(&storage, "b2").unwrap();
        assert_eq!(paired, Paired::StoreAdopted("a1".into()));
    }

    #[test]
    fn kept_ids_read_back_and_damaged_ones_are_errors() {
        assert_eq!(parse_kept(&kept("a1-b2")).unwrap(), "a1-b2");
        assert_eq!(parse_kept(b"abc").unwrap(), "abc");
        for damaged in [
            &b""[..],
            b"\n",
            b"a b\n",
            b"a/b",
            &[0xff, 0x61],
            &[b'a'; 65],
        ] {
            let error = parse_kept(damaged).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{damaged:?}");
        }
        assert!(parse_kept(new_setup_id().as_bytes()).is_ok());
    }

    #[test]
    fn an_unreadable_database_stops_the_start() {
        let storage = MemoryStorage::new();
        storage.faults().db_down.store(true, Ordering::SeqCst);
        let error = start(&storage, "a1").unwrap_err();
        assert!(format!("{error:#}").contains("database's set-up ID"));
        assert_eq!(storage.blobs().setup_id().unwrap(), None);
    }
}
