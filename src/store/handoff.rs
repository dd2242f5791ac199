//! The outbox's hand-off to the deliver stage: a delivery the writer has
//! just committed goes to its webhook's scheduler in memory as well, so
//! the scheduler does not read back (and parse) what the pipeline wrote
//! a moment ago. The outbox on disk stays the record: the hand-off only
//! saves a read, and whatever it does not hold is read from disk.
//!
//! Each webhook with a running scheduler has a lane of at most `cap`
//! fresh deliveries. When a lane is full (the receiver is slow, down, or
//! the webhook disabled), or before its scheduler first read the outbox,
//! the lane is *overflowed*: the writer hands nothing more over, and the
//! scheduler reads the outbox instead, oldest first, until it has caught
//! up; then it reopens the lane. `upto` is the last delivery id the
//! writer decided about for the lane (handed over or left on disk), read
//! under the same lock as the fresh deliveries are taken: a read of the
//! outbox limited to ids up to it can never meet a delivery that is also
//! in memory, so no delivery is started twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::sqlite::{lock, Due};

/// Fresh deliveries a lane holds at most.
pub const LANE_CAP: usize = 1024;

pub struct Handoff {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    lanes: HashMap<String, Lane>,
    /// The highest delivery id committed so far.
    committed_max: i64,
}

struct Lane {
    fresh: VecDeque<Due>,
    overflowed: bool,
    upto: i64,
}

/// What a scheduler learns when it takes its fresh deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Some of the webhook's deliveries were left on disk only (or the
    /// lane is new): read the outbox.
    pub overflowed: bool,
    /// Read the outbox only up to this id: every later delivery is in
    /// memory, or will be read after the next overflow.
    pub upto: i64,
}

impl Handoff {
    /// A hand-off for a store whose deliveries so far have ids up to
    /// `committed_max` (all of them on disk only).
    pub fn new(cap: usize, committed_max: i64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lanes: HashMap::new(),
                committed_max,
            }),
            cap: cap.max(1),
        }
    }

    /// The writer, after a commit: the deliveries it inserted (in id
    /// order) go to their lanes while there is room.
    pub(crate) fn committed(&self, inserted: Vec<(String, Due)>) {
        let mut inner = lock(&self.inner);
        for (webhook, due) in inserted {
            inner.committed_max = inner.committed_max.max(due.id);
            let Some(lane) = inner.lanes.get_mut(&webhook) else {
                continue;
            };
            lane.upto = due.id;
            if !lane.overflowed && lane.fresh.len() < self.cap {
                lane.fresh.push_back(due);
            } else {
                lane.overflowed = true;
            }
        }
    }

    /// The writer: deliveries changed hands or became pending again (a
    /// requeue, a replay, a webhook renamed, deleted or enabled): every
    /// lane drops what it holds (all of it is on disk) and reads the
    /// outbox again, up to every id committed so far (a rename moves
    /// older ids to another webhook).
    pub(crate) fn reread_all(&self) {
        let mut inner = lock(&self.inner);
        let upto = inner.committed_max;
        for lane in inner.lanes.values_mut() {
            lane.fresh.clear();
            lane.overflowed = true;
            lane.upto = lane.upto.max(upto);
        }
    }

    /// A scheduler starts: its lane, which reads the outbox first.
    pub fn open(&self, webhook: &str) {
        let mut inner = lock(&self.inner);
        let upto = inner.committed_max;
        inner.lanes.insert(
            webhook.to_string(),
            Lane {
                fresh: VecDeque::new(),
                overflowed: true,
                upto,
            },
        );
    }

    /// A scheduler stops: nothing more is handed to it.
    pub fn close(&self, webhook: &str) {
        lock(&self.inner).lanes.remove(webhook);
    }

    /// Moves the lane's fresh deliveries to `into` (oldest first). An
    /// overflowed lane stays so until [`Handoff::reopen`]: the scheduler
    /// reads the backlog first.
    pub fn take(&self, webhook: &str, into: &mut Vec<Due>) -> Taken {
        let mut inner = lock(&self.inner);
        let Some(lane) = inner.lanes.get_mut(webhook) else {
            return Taken {
                overflowed: true,
                upto: i64::MAX,
            };
        };
        into.extend(lane.fresh.drain(..));
        Taken {
            overflowed: lane.overflowed,
            upto: lane.upto,
        }
    }

    /// The scheduler has read the backlog up to `Taken::upto`: the writer
    /// hands deliveries over again. Returns the new `upto` (what was left
    /// on disk meanwhile is at or below it).
    pub fn reopen(&self, webhook: &str) -> i64 {
        let mut inner = lock(&self.inner);
        match inner.lanes.get_mut(webhook) {
            Some(lane) => {
                lane.overflowed = false;
                lane.upto
            }
            None => i64::MAX,
        }
    }

    /// The scheduler found more backlog than it read: the writer leaves
    /// new deliveries on disk again.
    pub fn overflow(&self, webhook: &str) {
        if let Some(lane) = lock(&self.inner).lanes.get_mut(webhook) {
            lane.overflowed = true;
        }
    }

    /// No fresh delivery waits in memory, in any lane.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        lock(&self.inner).lanes.values().all(|l| l.fresh.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredEvent;
    use std::sync::Arc;

    fn due(id: i64) -> Due {
        let event: StoredEvent = serde_json::from_value(serde_json::json!({
            "event": {"uuid": format!("event-{id}"), "embed_id": 1, "embed_jwt": null,
                      "environment_name": "P", "template_key": null, "event_type": "t",
                      "trigger_type": "user", "data": {}, "created_at": 0.0}
        }))
        .unwrap();
        Due {
            id,
            event: Arc::new(event),
            attempts: 0,
            part: 0,
        }
    }

    fn ids(v: &[Due]) -> Vec<i64> {
        v.iter().map(|d| d.id).collect()
    }

    #[test]
    fn a_new_lane_reads_the_outbox_up_to_what_was_committed_before_it() {
        let h = Handoff::new(2, 0);
        h.committed(vec![("w".into(), due(1))]);
        h.open("w");
        let mut got = Vec::new();
        let t = h.take("w", &mut got);
        assert_eq!((t.overflowed, t.upto, ids(&got)), (true, 1, vec![]));
        assert_eq!(h.reopen("w"), 1);
        // Reopened: the next deliveries come in memory, in order.
        h.committed(vec![("w".into(), due(2)), ("other".into(), due(3))]);
        h.committed(vec![("w".into(), due(4))]);
        let t = h.take("w", &mut got);
        assert_eq!((t.overflowed, t.upto, ids(&got)), (false, 4, vec![2, 4]));
    }

    #[test]
    fn a_full_lane_leaves_the_rest_on_disk_until_reopened() {
        let h = Handoff::new(2, 0);
        h.open("w");
        let mut got = Vec::new();
        h.reopen("w");
        h.committed((1..=5).map(|id| ("w".to_string(), due(id))).collect());
        let t = h.take("w", &mut got);
        // 1 and 2 in memory; 3 to 5 on disk only (up to id 5).
        assert_eq!((t.overflowed, t.upto, ids(&got)), (true, 5, vec![1, 2]));
        // Still reading the backlog: nothing more is handed over.
        h.committed(vec![("w".into(), due(6))]);
        got.clear();
        let t = h.take("w", &mut got);
        assert_eq!((t.overflowed, t.upto, ids(&got)), (true, 6, vec![]));
        assert_eq!(h.reopen("w"), 6);
        h.committed(vec![("w".into(), due(7))]);
        let t = h.take("w", &mut got);
        assert_eq!((t.overflowed, t.upto, ids(&got)), (false, 7, vec![7]));
        h.overflow("w");
        h.committed(vec![("w".into(), due(8))]);
        got.clear();
        assert_eq!(h.take("w", &mut got).upto, 8);
        assert!(got.is_empty());
        h.reopen("w");
        h.committed(vec![("w".into(), due(10)), ("other".into(), due(11))]);
        h.reread_all();
        got.clear();
        let t = h.take("w", &mut got);
        // What the lane held is dropped (it is on disk), and the outbox is
        // read up to every id committed, whoever's it was.
        assert_eq!((t.overflowed, t.upto, ids(&got)), (true, 11, vec![]));
        h.close("w");
        h.committed(vec![("w".into(), due(9))]);
        assert!(h.is_empty());
    }

    #[test]
    fn after_a_restart_a_lane_reads_what_the_store_held() {
        let h = Handoff::new(2, 41);
        h.open("w");
        let mut got = Vec::new();
        assert_eq!(h.take("w", &mut got).upto, 41);
    }
}
