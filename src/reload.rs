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
