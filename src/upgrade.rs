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

/// Tells systemd (`Type=notify`, when `NOTIFY_SOCKET` is set) that this
/// process is ready and is the service's main process: after an upgrade,
/// the new process takes the old one's place.
pub fn notify_ready() {
    let state = [
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Ready,
    ];
    if let Err(e) = sd_notify::notify(false, &state) {
        tracing::warn!(error = %e, "cannot tell systemd this process is ready");
    }
}

/// `taphook upgrade`: starts `taphook run --upgrade` on `config` in the
/// background (its output where this command's goes: the journal under
/// systemd) and returns once it serves `data_dir` (its pid in the pid
/// file) or fails. What `systemctl reload taphook` runs.
pub fn start_upgrade(config: &Path, data_dir: &Path, limit: Duration) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    let old = running(data_dir)?;
    let exe = std::env::current_exe().context("cannot find this taphook's binary")?;
    let mut child = std::process::Command::new(exe)
        .args(["run", "--upgrade", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        // Its own session: it outlives this command.
        .process_group(0)
        .spawn()
        .context("cannot start the new taphook")?;
    let new = child.id();
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the new taphook exited before taking over ({status}); pid {old} still serves");
        }
        let serving = std::fs::read_to_string(pid_file(data_dir))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if serving == Some(new) {
            return Ok(new);
        }
        if std::time::Instant::now() > deadline {
            bail!("the new taphook (pid {new}) did not take over within {limit:?}; pid {old} still serves");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    if !alive(pid) || pid == std::process::id() as i32 {
        bail!(
            "--upgrade: the taphook in {} (pid {pid}) is not running; start without --upgrade",
            path.display()
        );
    }
    Ok(pid)
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Returns once process `pid` has exited (looked at every 200 ms).
pub fn wait_for_exit(pid: i32) {
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(200));
    }
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
