//! Test doubles behind the storage traits, compiled for tests only (the `testing`
//! feature): storage in memory ([`MemoryStorage`]) and one switchboard of failures
//! ([`Faults`]) that the in-memory stores check and that [`FaultyMeta`]/[`FaultyBlobs`]
//! put in front of the real ones.

mod faults;
mod memory;

pub use faults::{Faults, FaultyBlobs, FaultyMeta, Gate};
pub use memory::MemoryStorage;
mod contract;

pub use contract::{
    check_blob_setup_id, check_contract, check_open_reads_back, check_pending_removals,
    check_remove_client, check_setup_id,
};
