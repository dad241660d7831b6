//! The server's sans-IO session (`sfc_server::testing::session::Conversation` per
//! connection over one `Core`, the production code) driven by arbitrary scripts: registrations, keys, uploads well-formed and broken, 900/901/902, raw and
//! half-structured bytes through a connection's `RequestDecoder`, storage faults, simulated
//! crashes and restarts. The driver and its invariants live in
//! `crates/sfc-server/tests/common/script.rs`, shared with the property tests
//! (`cargo test -p sfc-server --test properties`) so that CI runs the same entry point.
#![no_main]

#[path = "../../crates/sfc-server/tests/common/script.rs"]
mod script;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    script::Sim::run(data);
});
