//! Cleanup that survives the test process.
//!
//! Statics are never dropped, and a test process killed by a timeout runs no destructor at all, yet CI runs many test
//! binaries on one machine: a server left behind by each would pile up. A [`Watchdog`] is a small `sh` process that
//! blocks reading a pipe whose only writer is the test process. The kernel closes that pipe when the test process
//! exits for any reason (including SIGKILL), the read returns, and the shell runs the cleanup script. The watchdog
//! has its own process group, so a signal sent to the test's group (Ctrl-C, a test runner's timeout) does not stop it
//! before it has cleaned up.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

pub(crate) struct Watchdog {
    child: Child,
}

impl Watchdog {
    /// Starts a watchdog that runs `script` (with `sh`) once the test process has exited.
    pub(crate) fn spawn(script: &str) -> Watchdog {
        // Rust opens the pipe close-on-exec, so no other child of the test process inherits the write end and keeps
        // the watchdog waiting after the test process is gone.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read x; {script}"))
            .stdin(Stdio::piped())
            // Never hold the test's stdout/stderr: test runners wait for those pipes to close.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the cleanup watchdog (sh)");
        Watchdog { child }
    }

    /// Runs the cleanup script now and waits (at most `timeout`) until it finished: how owners clean up on `Drop`,
    /// so that the cleanup code is the same whichever way the test ends.
    pub(crate) fn fire(mut self, timeout: std::time::Duration) {
        drop(self.child.stdin.take());
        let done = super::wait_for(timeout, || self.child.try_wait().ok().flatten());
        if done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("cleanup watchdog did not finish within {timeout:?}");
        }
    }
}
