//! Stored files being replaced or removed: one at a time per client and file name.
//!
//! Storing an upload (the move into place, the commit of its row) and removing a file (a
//! 902, the admin's delete: the row, then the file) touch one path, the same for every
//! version of a name. Run together, a removal could delete the file an upload had just
//! moved into place and recorded, leaving a row that names no file after a 1603. Each
//! takes the name here first, waiting while the other holds it; other names and other
//! clients never wait, and packets are never refused for it. Both run as storage jobs
//! on the blocking pool, where waiting is allowed. Within one process only: servers
//! sharing a database and an object store do not see each other's names.
//!
//! The same locks keyed by client alone serialise one client's 826s (key pinning).

use sfc_proto::ClientId;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Condvar, Mutex, PoisonError};

/// Keys held by one job at a time, others waiting; see the module documentation.
#[derive(Debug)]
pub(super) struct KeyLocks<K> {
    held: Mutex<HashSet<K>>,
    freed: Condvar,
}

/// File names of clients being stored or removed.
pub(super) type NameLocks = KeyLocks<(ClientId, String)>;

/// A key held until dropped.
#[derive(Debug)]
pub(super) struct KeyGuard<'a, K: Eq + Hash> {
    locks: &'a KeyLocks<K>,
    key: Option<K>,
}

impl<K> Default for KeyLocks<K> {
    fn default() -> Self {
        KeyLocks {
            held: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyLocks<K> {
    /// Takes `key`, waiting while another job holds it (blocking).
    pub(super) fn lock_key(&self, key: K) -> KeyGuard<'_, K> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&key) {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key.clone());
        KeyGuard {
            locks: self,
            key: Some(key),
        }
    }
}

impl NameLocks {
    /// Takes `name` of `client`, waiting while another job holds it (blocking).
    pub(super) fn lock(&self, client: ClientId, name: &str) -> KeyGuard<'_, (ClientId, String)> {
        self.lock_key((client, name.to_owned()))
    }
}

impl<K: Eq + Hash> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.locks
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        self.locks.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_name_is_held_by_one_job_at_a_time_and_others_do_not_wait() {
        let locks = Arc::new(NameLocks::default());
        let a = ClientId([1; 16]);
        let first = locks.lock(a, "f");
        // Another name, another client: at once.
        drop(locks.lock(a, "g"));
        drop(locks.lock(ClientId([2; 16]), "f"));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || {
                let _second = locks.lock(a, "f");
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "taken while held"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("not taken once free");
        waiter.join().unwrap();
    }
}
