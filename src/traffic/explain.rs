//! `taphook explain --har FILE`: what the rules make of recorded traffic,
//! exchange by exchange, with the code a running taphook uses: the derive
//! stage (sessions carried from one exchange to the next, in the file's
//! order), dedup by event UUID, and the fan-out to webhooks. For every
//! route whose path matched, the event it derived or why it did not fire.
//! Nothing touches the network or the disk.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::dedup::Dedup;
use crate::derive::{Deriver, Skip};
use crate::filter::{fan_out, Verdict};
use crate::rules::Rules;
use crate::store::MemorySessions;
use crate::traffic::har::Recorded;

/// What one exchange gave.
#[derive(Debug, Serialize)]
pub struct ExchangeReport {
    /// Its index in the HAR's `log.entries`, from 0.
    pub entry: usize,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub events: Vec<EventReport>,
    /// Routes whose path matched but that gave no event.
    pub near_misses: Vec<NearMiss>,
}

/// An event a route derived.
#[derive(Debug, Serialize)]
pub struct EventReport {
    pub route: String,
    pub event_type: String,
    pub uuid: String,
    pub embed_id: Value,
    pub trigger_type: String,
    /// Its UUID was seen before: a running taphook would drop it.
    pub duplicate: bool,
    pub data: Value,
    /// The webhooks it would be delivered to.
    pub webhooks: Vec<String>,
    /// The other webhooks, and why not.
    pub skipped: Vec<(String, String)>,
}

/// A route whose path matched and that did not fire.
#[derive(Debug, Serialize)]
pub struct NearMiss {
    pub route: String,
    /// The event type the route would have derived.
    pub event: String,
    pub reason: String,
}

/// Runs `recorded` through `rules` in order.
pub fn explain(
    rules: &Rules,
    recorded: &[Recorded],
    environment_name: &str,
) -> Vec<ExchangeReport> {
    let deriver = Deriver::offline(environment_name);
    let sessions = MemorySessions::new(256 << 20, Duration::from_secs(30 * 86_400));
    let dedup = Dedup::new(1 << 20, Duration::from_secs(86_400));
    recorded
        .iter()
        .map(|r| {
            let x = &r.exchange;
            let mut report = ExchangeReport {
                entry: r.entry,
                method: x.method.clone(),
                path: x.path.clone(),
                status: x.status,
                events: Vec::new(),
                near_misses: Vec::new(),
            };
            for (route, result) in deriver.explain(x, rules, &sessions) {
                match result {
                    Ok(derived) => report
                        .events
                        .push(event_report(route, derived, rules, &dedup)),
                    Err(skip) => report.near_misses.push(NearMiss {
                        route: route.name.clone(),
                        event: route.event.clone(),
                        reason: reason(&skip, route, x),
                    }),
                }
            }
            report
        })
        .collect()
}

/// A derived event, where it would go, and whether it repeats a UUID.
fn event_report(
    route: &crate::rules::model::Route,
    derived: crate::event::DerivedEvent,
    rules: &Rules,
    dedup: &Dedup,
) -> EventReport {
    let (deliver, skip): (Vec<_>, Vec<_>) = fan_out(&derived, rules)
        .into_iter()
        .partition(|d| matches!(d.verdict, Verdict::Deliver));
    let e = derived.event;
    EventReport {
        route: route.name.clone(),
        duplicate: !dedup.first_seen(&e.uuid),
        webhooks: deliver.iter().map(|d| d.webhook.key.clone()).collect(),
        skipped: skip
            .iter()
            .map(|d| (d.webhook.key.clone(), d.why(&e.event_type)))
            .collect(),
        event_type: e.event_type,
        uuid: e.uuid,
        embed_id: e.embed_id,
        trigger_type: e.trigger_type,
        data: e.data,
    }
}

fn reason(skip: &Skip, route: &crate::rules::model::Route, x: &crate::derive::Exchange) -> String {
    match skip {
        Skip::Method => format!(
            "method {} (the route takes {})",
            x.method,
            route.methods.join(", ")
        ),
        Skip::Status => format!("status {} (the route takes {})", x.status, statuses(route)),
        Skip::WhenFalse => format!(
            "`when` is false: {}",
            route.when.as_ref().map_or(&Value::Null, |w| w.written())
        ),
        Skip::WhenFailed(e) => format!("`when` failed: {e}"),
    }
}

fn statuses(route: &crate::rules::model::Route) -> String {
    use crate::rules::model::StatusRule;
    route
        .status
        .0
        .iter()
        .map(|r| match r {
            StatusRule::Class(c) => format!("{c}xx"),
            StatusRule::Exact(s) => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The compact table `taphook explain` prints.
pub fn table(reports: &[ExchangeReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (mut events, mut dups) = (0, 0);
    for r in reports {
        if r.events.is_empty() && r.near_misses.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "#{:<4} {} {} -> {}",
            r.entry, r.method, r.path, r.status
        );
        for e in &r.events {
            events += 1;
            dups += usize::from(e.duplicate);
            let _ = writeln!(
                out,
                "      event  {:<24} embed_id={} trigger={}{}  (route {})",
                e.event_type,
                compact(&e.embed_id),
                e.trigger_type,
                if e.duplicate {
                    "  DUPLICATE (dropped)"
                } else {
                    ""
                },
                e.route
            );
            let _ = writeln!(out, "             data {}", compact(&e.data));
            let to = if e.webhooks.is_empty() {
                "(none)".to_string()
            } else {
                e.webhooks.join(", ")
            };
            let _ = writeln!(out, "             to   {to}");
            for (key, why) in &e.skipped {
                let _ = writeln!(out, "             not  {key}: {why}");
            }
        }
        for m in &r.near_misses {
            let _ = writeln!(out, "      miss   {:<24} {}", m.route, m.reason);
        }
    }
    let _ = writeln!(
        out,
        "{} exchange(s), {} event(s) ({} duplicate), {} exchange(s) matched no route",
        reports.len(),
        events,
        dups,
        reports
            .iter()
            .filter(|r| r.events.is_empty() && r.near_misses.is_empty())
            .count()
    );
    out
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}
