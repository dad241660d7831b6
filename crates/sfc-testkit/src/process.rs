//! Stopping a child process: SIGTERM first, so that it can shut down cleanly (and remove
//! what it keeps outside its folder), SIGKILL when it does not in time.

use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Sends `child` SIGTERM and waits up to `patience` for it to exit; `None` if it is still
/// running then.
pub fn terminate(child: &mut Child, patience: Duration) -> io::Result<Option<ExitStatus>> {
    // `kill(1)`: std has SIGKILL only, and the workspace forbids the unsafe `libc::kill`.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

/// [`terminate`], then SIGKILL if `child` has not exited (or could not be waited for);
/// the child is reaped either way. `Ok(None)`: it had to be killed.
pub fn terminate_or_kill(child: &mut Child, patience: Duration) -> io::Result<Option<ExitStatus>> {
    let ended = terminate(child, patience);
    if !matches!(ended, Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::{terminate, terminate_or_kill};
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn sigterm_ends_a_process_that_does_not_ignore_it() {
        // `sleep 30` outlives the patience unless the signal ends it.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let status = terminate(&mut child, Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|status| !status.success()));
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_and_reaped() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .unwrap();
        // Time for sh to install the trap before the signal comes.
        std::thread::sleep(Duration::from_millis(200));
        let ended = terminate_or_kill(&mut child, Duration::from_millis(300)).unwrap();
        assert!(ended.is_none());
        // Reaped: the status is already known.
        assert!(child.try_wait().unwrap().is_some());
    }
}
