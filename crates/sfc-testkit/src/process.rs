//! Stopping a child process: a signal first (SIGTERM, so that it can shut down cleanly and
//! remove what it keeps outside its folder; SIGINT for `strace`, which then detaches and
//! writes its summary), SIGKILL when it does not exit in time.

use std::io;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A signal the helpers send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Kill,
}

impl Signal {
    fn number(self) -> rustix::process::Signal {
        match self {
            Signal::Terminate => rustix::process::Signal::TERM,
            Signal::Interrupt => rustix::process::Signal::INT,
            Signal::Kill => rustix::process::Signal::KILL,
        }
    }
}

/// Sends `signal` to process `pid`; a process that is gone already is not an error. Any
/// other failure (no permission, a `pid` that is no process ID) is returned: a helper that
/// silently sent nothing would only show as a time-out.
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let process = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("{pid} is not a process ID")))?;
    match rustix::process::kill_process(process, signal.number()) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(error) => Err(io::Error::other(format!(
            "cannot send {signal:?} to process {pid}: {error}"
        ))),
    }
}

/// Sends `child` `signal` and waits up to `patience` for it to exit; `None` if it is still
/// running then. A child that has exited already gets no signal (its process ID may have
/// been reused).
pub fn stop(
    child: &mut Child,
    signal: Signal,
    patience: Duration,
) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    send_signal(child.id(), signal)?;
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

/// [`stop`], then SIGKILL if `child` has not exited (or could not be waited for); the
/// child is reaped either way. `Ok(None)`: it had to be killed.
pub fn stop_or_kill(
    child: &mut Child,
    signal: Signal,
    patience: Duration,
) -> io::Result<Option<ExitStatus>> {
    let ended = stop(child, signal, patience);
    if !matches!(ended, Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    ended
}

/// [`stop`] with SIGTERM.
pub fn terminate(child: &mut Child, patience: Duration) -> io::Result<Option<ExitStatus>> {
    stop(child, Signal::Terminate, patience)
}

/// [`stop_or_kill`] with SIGTERM.
pub fn terminate_or_kill(child: &mut Child, patience: Duration) -> io::Result<Option<ExitStatus>> {
    stop_or_kill(child, Signal::Terminate, patience)
}

#[cfg(test)]
mod tests {
    use super::{stop, terminate, terminate_or_kill, Signal};
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

    #[test]
    fn sigint_is_the_signal_sent_when_asked_for() {
        use std::os::unix::process::ExitStatusExt;
        // SIGTERM ignored, SIGINT at its default (a shell started in the background, as
        // CI may be, hands its children SIGINT ignored): only a SIGINT ends it in time.
        let mut child = Command::new("env")
            .args([
                "--default-signal=INT",
                "--ignore-signal=TERM",
                "sleep",
                "30",
            ])
            .spawn()
            .unwrap();
        // `env` sets the dispositions, then becomes `sleep`.
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep"
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = stop(&mut child, Signal::Interrupt, Duration::from_secs(10)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status.and_then(|status| status.signal()), Some(2));
    }

    #[test]
    fn a_child_that_has_exited_keeps_its_own_status() {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let status = stop(&mut child, Signal::Kill, Duration::from_secs(1)).unwrap();
        assert!(status.is_some_and(|status| status.success()));
    }
}
