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
//! | none | none | a new ID is recorded in the database, then in the store |
//!
//! The database is written first and is the arbiter: servers starting at once on one
//! database and one store each propose an ID, the first recorded wins
//! ([`MetaStore::record_setup_id`]), and all of them write that one to the store. The store
//! is read before the database, so a store that has an ID always has it from a database
//! that had it already: "none | X" never comes from a start-up cut short, or from another
//! server starting at the same time.

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
}

/// Checks that `meta` and `blobs` belong to one set-up, recording a new ID where there is
/// none (see the module docs); `proposed` is the ID to record in a new set-up.
pub fn pair(meta: &dyn MetaStore, blobs: &dyn BlobStore, proposed: &str) -> anyhow::Result<Paired> {
    let in_store = blobs
        .setup_id()
        .context("cannot read the file store's set-up ID")?;
    let in_database = meta
        .setup_id()
        .map_err(|error| anyhow::anyhow!("cannot read the database's set-up ID: {error}"))?;
    let fix = format!(
        "start with the database and the file store that belong together (check --database, \
         --data-dir and --store); to give this file store to this database anyway, delete \
         {SETUP_ID_PATH} in the store"
    );
    match (in_database, in_store) {
        (Some(database), Some(store)) if database == store => Ok(Paired::Matched(database)),
        (Some(database), Some(store)) => Err(anyhow::anyhow!(
            "the database (set-up {database}) and the file store (set-up {store}) belong to \
             different set-ups: {fix}"
        )),
        (None, Some(store)) => Err(anyhow::anyhow!(
            "the file store belongs to set-up {store}, but the database has no set-up ID (a \
             new database?): {fix}"
        )),
        (Some(database), None) => {
            write_to_store(blobs, &database)?;
            Ok(Paired::StoreAdopted(database))
        }
        (None, None) => {
            let recorded = meta.record_setup_id(proposed).map_err(|error| {
                anyhow::anyhow!("cannot record the set-up ID in the database: {error}")
            })?;
            write_to_store(blobs, &recorded)?;
            // Another server starting at once may have recorded its own first.
            if recorded == proposed {
                Ok(Paired::New(recorded))
            } else {
                Ok(Paired::StoreAdopted(recorded))
            }
        }
    }
}

fn write_to_store(blobs: &dyn BlobStore, id: &str) -> anyhow::Result<()> {
    blobs
        .write_setup_id(id)
        .context("cannot write the set-up ID to the file store")
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
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{SETUP_ID_PATH} does not hold a set-up ID"),
        ))
    }
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
    use std::sync::atomic::Ordering;

    fn both(storage: &MemoryStorage) -> (Option<String>, Option<String>) {
        (
            storage.meta().setup_id().unwrap(),
            storage.blobs().setup_id().unwrap(),
        )
    }

    #[test]
    fn a_new_set_up_records_the_id_in_both_and_later_starts_match() {
        let storage = MemoryStorage::new();
        let (meta, blobs) = (storage.meta(), storage.blobs());
        assert_eq!(pair(&meta, &blobs, "a1").unwrap(), Paired::New("a1".into()));
        assert_eq!(both(&storage), (Some("a1".into()), Some("a1".into())));
        // The next start proposes another ID; the recorded one stays.
        assert_eq!(
            pair(&meta, &blobs, "b2").unwrap(),
            Paired::Matched("a1".into())
        );
        assert_eq!(both(&storage), (Some("a1".into()), Some("a1".into())));
    }

    #[test]
    fn a_store_without_an_id_takes_the_databases() {
        let storage = MemoryStorage::new();
        storage.meta().record_setup_id("a1").unwrap();
        let paired = pair(&storage.meta(), &storage.blobs(), "b2").unwrap();
        assert_eq!(paired, Paired::StoreAdopted("a1".into()));
        assert_eq!(both(&storage), (Some("a1".into()), Some("a1".into())));
    }

    #[test]
    fn another_servers_id_recorded_first_wins() {
        let storage = MemoryStorage::new();
        // Another server recorded its ID after this one read the database.
        storage.meta().record_setup_id("other").unwrap();
        storage
            .faults()
            .setup_id_unseen
            .store(true, Ordering::SeqCst);
        let paired = pair(&storage.meta(), &storage.blobs(), "mine").unwrap();
        assert_eq!(paired, Paired::StoreAdopted("other".into()));
        storage
            .faults()
            .setup_id_unseen
            .store(false, Ordering::SeqCst);
        assert_eq!(both(&storage), (Some("other".into()), Some("other".into())));
    }

    #[test]
    fn mismatched_stores_are_refused_and_left_as_they_were() {
        let storage = MemoryStorage::new();
        storage.meta().record_setup_id("a1").unwrap();
        storage.blobs().write_setup_id("b2").unwrap();
        let error = pair(&storage.meta(), &storage.blobs(), "c3").unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("set-up a1") && text.contains("set-up b2"),
            "{text}"
        );
        assert!(text.contains(SETUP_ID_PATH), "{text}");
        assert_eq!(both(&storage), (Some("a1".into()), Some("b2".into())));
    }

    #[test]
    fn a_new_database_on_a_store_of_another_set_up_is_refused() {
        let storage = MemoryStorage::new();
        storage.blobs().write_setup_id("b2").unwrap();
        let error = pair(&storage.meta(), &storage.blobs(), "c3").unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("no set-up ID"), "{text}");
        assert_eq!(both(&storage), (None, Some("b2".into())));
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
    fn unreadable_stores_stop_the_start() {
        let storage = MemoryStorage::new();
        storage.faults().db_down.store(true, Ordering::SeqCst);
        let error = pair(&storage.meta(), &storage.blobs(), "a1").unwrap_err();
        assert!(format!("{error:#}").contains("database's set-up ID"));
        assert_eq!(storage.blobs().setup_id().unwrap(), None);
    }
}
