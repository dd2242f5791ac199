//! What reloads on SIGHUP and on file changes (the rules, the listener's
//! certificate) shares one loop: a reload per signal, and one per burst of
//! changes once the writer had `settle` to finish.

use std::future::Future;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use tokio::sync::mpsc::UnboundedReceiver;

/// File changes as they come, with the watcher that reports them (kept
/// alive as long as the loop runs).
pub type Changes = (notify::RecommendedWatcher, UnboundedReceiver<()>);

/// Changes watched from before the files were first read, kept until the
/// reloader starts (a Pingora service starts after the listeners serve):
/// a change in between waits in the channel instead of going unseen.
pub struct Pending(std::sync::Mutex<Option<Changes>>);

impl Pending {
    pub fn new(changes: Option<Changes>) -> Self {
        Self(std::sync::Mutex::new(changes))
    }

    /// The changes queued so far and the watch; `None` when nothing could
    /// be watched (the warning was given then) or they were taken already.
    pub fn take(&self) -> Option<Changes> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Watches `dirs` (with `mode`) for changes `relevant` takes, for
/// [`on_signal_or_change`]; `None`, with a warning naming `what`, when no
/// directory can be watched (SIGHUP still reloads).
pub fn watch(
    dirs: &[std::path::PathBuf],
    mode: notify::RecursiveMode,
    relevant: impl Fn(&notify::Event) -> bool + Send + 'static,
    what: &str,
) -> Option<Changes> {
    use notify::Watcher as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && relevant(&e)) {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {what}; reload it with SIGHUP");
            return None;
        }
    };
    let mut watched = 0;
    for dir in dirs {
        match watcher.watch(dir, mode) {
            Ok(()) => watched += 1,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch {what}; reload it with SIGHUP")
            }
        }
    }
    (watched > 0).then_some((watcher, rx))
}

/// Calls `reload` on every SIGHUP, and once per burst of `changes` after
/// `settle`, until `shutdown`. `what` names it in the warning when SIGHUP
/// cannot be watched.
pub async fn on_signal_or_change<F, Fut>(
    mut shutdown: ShutdownWatch,
    changes: Option<Changes>,
    settle: Duration,
    what: &str,
    reload: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; {what} reloads on file changes only");
        return;
    };
    let (_watcher, mut changes) = match changes {
        Some((w, rx)) => (Some(w), rx),
        None => (None, tokio::sync::mpsc::unbounded_channel().1),
    };
    loop {
        tokio::select! {
            _ = hup.recv() => reload().await,
            Some(()) = changes.recv() => {
                tokio::time::sleep(settle).await;
                while changes.try_recv().is_ok() {}
                reload().await;
            }
            _ = shutdown.changed() => break,
        }
    }
}
