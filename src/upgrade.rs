//! Restarts that drop nothing: `taphook run --upgrade` starts a new
//! process that takes the listening sockets from the running one
//! (Pingora's graceful upgrade, through a Unix socket in `data_dir`).
//!
//! The new process finds the running one by the pid file in `data_dir`,
//! asks it to hand over (SIGQUIT) while it waits for the sockets, and
//! serves from them at once: connections queue on the same socket and are
//! never refused. The old process stops starting deliveries, keeps
//! accepting for a few seconds beside the new one, then stops accepting,
//! lets in-flight requests finish within `shutdown_grace`, writes what its
//! pipeline derived from them to the store, and exits. The new process
//! starts delivering once the old one's in-flight deliveries have had
//! `delivery.shutdown_timeout` to finish.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// The pid file of the process serving `data_dir`.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("taphook.pid")
}

/// The Unix socket the listening sockets pass through.
pub fn upgrade_sock(data_dir: &Path) -> PathBuf {
    data_dir.join("upgrade.sock")
}

/// Records this process as the one serving `data_dir`.
pub fn write_pid(data_dir: &Path) {
    let path = pid_file(data_dir);
    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the pid file; `taphook run --upgrade` will not find this process");
    }
}

/// Removes the pid file if it is still this process's (a newer process
/// that took over has written its own).
pub fn remove_pid(data_dir: &Path) {
    let path = pid_file(data_dir);
    let ours = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The running process serving `data_dir`, which `--upgrade` takes over.
pub fn running(data_dir: &Path) -> anyhow::Result<i32> {
    let path = pid_file(data_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--upgrade: no running taphook found ({} is missing); start it without --upgrade",
            path.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("--upgrade: {} does not hold a pid", path.display()))?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    if !alive || pid == std::process::id() as i32 {
        bail!(
            "--upgrade: the taphook in {} (pid {pid}) is not running; start without --upgrade",
            path.display()
        );
    }
    Ok(pid)
}

/// Asks `pid` to hand its listening sockets over, once this process is
/// about to wait for them (the old process retries its connection to the
/// upgrade socket, so the order of the two does not matter much).
pub fn ask_to_hand_over(pid: i32) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        tracing::info!(
            pid,
            "asking the running taphook to hand its sockets over (SIGQUIT)"
        );
        if let Err(e) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGQUIT,
        ) {
            tracing::error!(pid, error = %e, "cannot signal the running taphook");
        }
    });
}
