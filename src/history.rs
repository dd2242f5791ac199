//! Each webhook's health over time: per hour, its attempts by outcome and
//! a histogram of their latency (p50 and p99 come from it), for the last
//! 7 days. Counted in memory at each attempt and written to the embedded
//! store every few seconds and at shutdown (the `webhook_hours` table),
//! so it survives restarts; read back at start. Bounded: 169 hours per
//! webhook, older hours are dropped from memory and the store. With the
//! JetStream store each instance also puts its hours of each webhook in a
//! KV bucket (one key per webhook and instance), and a view adds up every
//! instance's hours.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hours kept: 7 days and the current hour.
pub const HOURS: i64 = 7 * 24 + 1;
const HOUR_MS: i64 = 3_600_000;
/// Latency buckets grow by this factor: a percentile is within ±5%.
const GROWTH: f64 = 1.1;

/// One hour of one webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hour {
    /// Attempts by outcome class (`2xx`, `4xx`, `5xx`, `timeout`, `error`).
    pub outcomes: BTreeMap<String, u64>,
    /// Attempts by latency bucket (the bucket of `ms` is log₁.₁(ms+1)).
    pub latency: BTreeMap<u32, u64>,
}

impl Hour {
    fn add(&mut self, class: &str, latency: Duration) {
        *self.outcomes.entry(class.to_string()).or_default() += 1;
        *self.latency.entry(bucket(latency)).or_default() += 1;
    }

    /// Adds another instance's counts of the same hour.
    pub fn merge(&mut self, other: &Hour) {
        for (class, n) in &other.outcomes {
            *self.outcomes.entry(class.clone()).or_default() += n;
        }
        for (b, n) in &other.latency {
            *self.latency.entry(*b).or_default() += n;
        }
    }

    /// The latency under which `q` (0 to 1) of the hour's attempts fell,
    /// in ms (the bucket's upper bound).
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return Some(upper_ms(*b));
            }
        }
        None
    }
}

fn bucket(latency: Duration) -> u32 {
    let ms = latency.as_secs_f64() * 1000.0;
    ((ms + 1.0).ln() / GROWTH.ln()).floor().max(0.0) as u32
}

fn upper_ms(bucket: u32) -> f64 {
    let ms = GROWTH.powi(bucket as i32 + 1) - 1.0;
    (ms * 10.0).round() / 10.0
}

/// The hour `ms` falls in (its start, in hours since the epoch).
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// The last [`HOURS`] hours up to `now` of the hours `parts` hold (each
/// instance's, added up), oldest first, one entry per hour (empty hours
/// included).
pub fn view(parts: &[BTreeMap<i64, Hour>], now: i64) -> Vec<HourView> {
    let current = hour_of(now);
    (current - HOURS + 1..=current)
        .map(|h| {
            let mut hour = Hour::default();
            for part in parts {
                if let Some(p) = part.get(&h) {
                    hour.merge(p);
                }
            }
            HourView {
                at: h * HOUR_MS,
                attempts: hour.outcomes.values().sum(),
                p50_ms: hour.percentile(0.5),
                p99_ms: hour.percentile(0.99),
                outcomes: hour.outcomes,
            }
        })
        .collect()
}

/// One hour as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HourView {
    /// The hour's start, in ms since the epoch.
    pub at: i64,
    pub attempts: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
pub struct History {
    hours: Mutex<HashMap<String, BTreeMap<i64, Hour>>>,
    /// Hours changed since the last write to the store, per webhook.
    dirty: Mutex<HashMap<String, HashSet<i64>>>,
}

impl History {
    /// The history read back from the store: `(webhook, hour, JSON)` rows.
    pub fn from_rows(rows: Vec<(String, i64, String)>) -> Self {
        let mut hours: HashMap<String, BTreeMap<i64, Hour>> = HashMap::new();
        for (webhook, hour, json) in rows {
            if let Ok(h) = serde_json::from_str::<Hour>(&json) {
                hours.entry(webhook).or_default().insert(hour, h);
            }
        }
        Self {
            hours: Mutex::new(hours),
            dirty: Mutex::default(),
        }
    }

    /// An attempt on `webhook` at `now` (ms).
    pub fn attempt(&self, webhook: &str, class: &str, latency: Duration, now: i64) {
        let hour = hour_of(now);
        {
            let mut hours = self.hours.lock().unwrap_or_else(|e| e.into_inner());
            let webhook_hours = match hours.get_mut(webhook) {
                Some(h) => h,
                None => hours.entry(webhook.to_string()).or_default(),
            };
            webhook_hours.entry(hour).or_default().add(class, latency);
            if webhook_hours.len() > HOURS as usize {
                webhook_hours.retain(|h, _| *h > hour - HOURS);
            }
        }
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        match dirty.get_mut(webhook) {
            Some(hours) => {
                hours.insert(hour);
            }
            None => {
                dirty.insert(webhook.to_string(), HashSet::from([hour]));
            }
        }
    }

    /// The last [`HOURS`] hours of `webhook` up to `now`, oldest first,
    /// one entry per hour (empty hours included).
    pub fn view(&self, webhook: &str, now: i64) -> Vec<HourView> {
        view(&[self.snapshot(webhook)], now)
    }

    /// This process's hours of `webhook`.
    pub fn snapshot(&self, webhook: &str) -> BTreeMap<i64, Hour> {
        let hours = self.hours.lock().unwrap_or_else(|e| e.into_inner());
        hours.get(webhook).cloned().unwrap_or_default()
    }

    /// The hours changed since the last call, as rows to write, and the
    /// oldest hour still kept (older rows may go).
    pub fn changed(&self, now: i64) -> (Vec<(String, i64, String)>, i64) {
        let dirty: Vec<(String, i64)> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .flat_map(|(w, hours)| hours.into_iter().map(move |h| (w.clone(), h)))
                .collect();
        let hours = self.hours.lock().unwrap_or_else(|e| e.into_inner());
        let rows = dirty
            .into_iter()
            .filter_map(|(w, h)| {
                let hour = hours.get(&w)?.get(&h)?;
                let json = serde_json::to_string(hour).ok()?;
                Some((w, h, json))
            })
            .collect();
        (rows, hour_of(now) - HOURS + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_their_bucket() {
        let mut hour = Hour::default();
        for ms in 1..=100u64 {
            hour.add("2xx", Duration::from_millis(ms));
        }
        let p50 = hour.percentile(0.5).unwrap();
        let p99 = hour.percentile(0.99).unwrap();
        assert!((50.0..=56.0).contains(&p50), "{p50}");
        assert!((99.0..=110.0).contains(&p99), "{p99}");
    }

    #[test]
    fn hours_roll_and_survive_a_round_trip() {
        let history = History::default();
        let now = 1_000 * HOUR_MS;
        history.attempt("a", "2xx", Duration::from_millis(10), now - 2 * HOUR_MS);
        history.attempt("a", "5xx", Duration::from_millis(30), now);
        history.attempt("a", "2xx", Duration::from_millis(20), now);
        let (rows, oldest) = history.changed(now);
        assert_eq!(rows.len(), 2);
        assert_eq!(oldest, 1_000 - HOURS + 1);
        assert!(history.changed(now).0.is_empty(), "written once");
        let back = History::from_rows(rows);
        let view = back.view("a", now);
        assert_eq!(view.len(), HOURS as usize);
        let last = view.last().unwrap();
        assert_eq!(last.attempts, 2);
        assert_eq!(last.outcomes["5xx"], 1);
        assert_eq!(view[view.len() - 3].attempts, 1);
        assert_eq!(view[view.len() - 2].attempts, 0);
        // Two instances' hours add up.
        let both = super::view(&[history.snapshot("a"), back.snapshot("a")], now);
        assert_eq!(both.last().unwrap().attempts, 4);
        assert_eq!(both.last().unwrap().outcomes["5xx"], 2);
        // An hour older than 7 days is dropped when the webhook gets a new one.
        history.attempt("a", "2xx", Duration::from_millis(1), now + HOURS * HOUR_MS);
        let later = history.view("a", now + HOURS * HOUR_MS);
        assert_eq!(later.iter().map(|h| h.attempts).sum::<u64>(), 1);
    }
}
