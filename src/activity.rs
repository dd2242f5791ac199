//! What happened in each of the last minutes, for the console's overview
//! and the webhooks' recent success rates: events accepted, and attempts
//! per webhook that succeeded or failed. Kept in memory by this process
//! (so it starts empty and, with several instances, is each instance's
//! own share), at one lock per event or attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Minutes kept: the last hour and the current minute.
pub const MINUTES: usize = 61;

/// One minute's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute's start, in ms since the epoch.
    pub at: i64,
    pub events: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Per minute (its number since the epoch), oldest first.
type Ring<T> = VecDeque<(i64, T)>;

#[derive(Default)]
struct Counts {
    events: Ring<u64>,
    /// Per webhook: (succeeded, failed).
    attempts: HashMap<String, Ring<(u64, u64)>>,
}

#[derive(Default)]
pub struct Activity {
    counts: Mutex<Counts>,
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

/// The entry for `minute` at the back of `ring`, made when missing;
/// minutes older than [`MINUTES`] fall off the front.
fn slot<T: Default>(ring: &mut Ring<T>, minute: i64) -> &mut T {
    if ring.back().is_none_or(|(m, _)| *m != minute) {
        ring.push_back((minute, T::default()));
        while ring
            .front()
            .is_some_and(|(m, _)| *m <= minute - MINUTES as i64)
        {
            ring.pop_front();
        }
    }
    match ring.back_mut() {
        Some((_, t)) => t,
        None => unreachable!("pushed above"),
    }
}

impl Activity {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An event accepted (after dedup) at `now` (ms).
    pub fn event(&self, now: i64) {
        *slot(&mut self.counts().events, minute_of(now)) += 1;
    }

    /// An attempt on `webhook` at `now` (ms).
    pub fn attempt(&self, webhook: &str, succeeded: bool, now: i64) {
        let mut counts = self.counts();
        let ring = match counts.attempts.get_mut(webhook) {
            Some(ring) => ring,
            None => counts.attempts.entry(webhook.to_string()).or_default(),
        };
        let (ok, failed) = slot(ring, minute_of(now));
        if succeeded {
            *ok += 1;
        } else {
            *failed += 1;
        }
    }

    /// The last hour's minutes and the current one, oldest first, each
    /// with every webhook's attempts summed.
    pub fn minutes(&self, now: i64) -> Vec<Minute> {
        let last = minute_of(now);
        let first = last - MINUTES as i64 + 1;
        let mut out: Vec<Minute> = (first..=last)
            .map(|m| Minute {
                at: m * 60_000,
                ..Minute::default()
            })
            .collect();
        let counts = self.counts();
        let at = |m: i64| (first..=last).contains(&m).then(|| (m - first) as usize);
        for (m, n) in &counts.events {
            if let Some(i) = at(*m) {
                out[i].events += n;
            }
        }
        for ring in counts.attempts.values() {
            for (m, (ok, failed)) in ring {
                if let Some(i) = at(*m) {
                    out[i].delivered += ok;
                    out[i].failed += failed;
                }
            }
        }
        out
    }

    /// `webhook`'s attempts in the last hour: (succeeded, failed).
    pub fn webhook_attempts(&self, webhook: &str, now: i64) -> (u64, u64) {
        let first = minute_of(now) - MINUTES as i64 + 1;
        self.counts().attempts.get(webhook).map_or((0, 0), |ring| {
            ring.iter()
                .filter(|(m, _)| *m >= first)
                .fold((0, 0), |(a, b), (_, (ok, failed))| (a + ok, b + failed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_forgets_after_an_hour() {
        let activity = Activity::default();
        let t0 = 1_000 * 60_000;
        activity.event(t0);
        activity.event(t0 + 59_999);
        activity.event(t0 + 60_000);
        activity.attempt("a", true, t0);
        activity.attempt("a", false, t0 + 60_000);
        activity.attempt("b", true, t0 + 60_000);
        let minutes = activity.minutes(t0 + 60_000);
        assert_eq!(minutes.len(), MINUTES);
        let [.., before, last] = minutes.as_slice() else {
            panic!("{minutes:?}")
        };
        assert_eq!(
            (before.at, before.events, before.delivered, before.failed),
            (t0, 2, 1, 0)
        );
        assert_eq!((last.events, last.delivered, last.failed), (1, 1, 1));
        assert_eq!(activity.webhook_attempts("a", t0 + 60_000), (1, 1));
        // An hour later, only the last minute is left.
        let later = t0 + 60_000 * MINUTES as i64;
        assert_eq!(activity.webhook_attempts("a", later), (0, 1));
        activity.event(later + 60_000 * 5);
        assert_eq!(activity.counts().events.len(), 1);
        assert_eq!(
            activity
                .minutes(later)
                .iter()
                .map(|m| m.events)
                .sum::<u64>(),
            0
        );
    }
}
