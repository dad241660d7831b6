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

use sfc_proto::ClientId;
use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct NameLocks {
    held: Mutex<HashSet<(ClientId, String)>>,
    freed: Condvar,
}

/// A name held until dropped.
#[derive(Debug)]
pub(super) struct NameGuard<'a> {
    locks: &'a NameLocks,
    key: (ClientId, String),
}

impl NameLocks {
    /// Takes `name` of `client`, waiting while another job holds it (blocking).
    pub(super) fn lock(&self, client: ClientId, name: &str) -> NameGuard<'_> {
        let key = (client, name.to_owned());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&key) {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key.clone());
        NameGuard { locks: self, key }
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        self.locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
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
