//! Each session's progress through the importer's stages, for the funnel,
//! stalled sessions and the console's sessions. Kept in the embedded
//! store with either backend: with JetStream, each instance keeps the
//! progress of the traffic it sees in its local file (stalled sessions are
//! not reported then: see `app.rs`).

use rusqlite::{params, OptionalExtension as _};

use super::sqlite::{like_escaped, FunnelRow, Op, Store, StoreError};

/// A row of `session_progress`: the progress as JSON, when its session's
/// last event came, and whether stall checks look at it.
impl Store {
    pub fn get_progress(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM session_progress WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    /// Keeps a session's funnel progress; `watched` sessions are those
    /// [`Store::idle_sessions`] looks at.
    pub fn put_progress(
        &self,
        key: &str,
        value: String,
        last_event_at: i64,
        watched: bool,
    ) -> Result<(), StoreError> {
        self.send(Op::PutProgress {
            key: key.into(),
            value,
            last_event_at,
            watched,
        })
    }

    /// Watched sessions whose last event is at or before `cutoff`, oldest
    /// first.
    pub fn idle_sessions(
        &self,
        cutoff: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT key, value FROM session_progress WHERE watched = 1 AND last_event_at <= ?1 ORDER BY last_event_at LIMIT ?2",
            )?;
            let rows = st.query_map(params![cutoff, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Sessions' funnel progress, most recent event first: `(key,
    /// progress)` before `before` (a `(last_event_at, key)` from an earlier
    /// page), whose key or `template_key` contains `search`.
    pub fn recent_sessions(
        &self,
        search: Option<&str>,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let pattern = search.map(|s| format!("%{}%", like_escaped(s)));
        let (at, key) = before.map_or((None, None), |(at, key)| (Some(at), Some(key)));
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT key, value FROM session_progress INDEXED BY session_progress_recent
                 WHERE (?1 IS NULL OR (last_event_at, key) < (?1, ?2))
                   AND (?3 IS NULL OR key LIKE ?3 ESCAPE '\\' OR json_extract(value, '$.template_key') LIKE ?3 ESCAPE '\\')
                 ORDER BY last_event_at DESC, key DESC LIMIT ?4",
            )?;
            let rows = st.query_map(params![at, key, pattern, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Per `template_key` (`None`: without one), how many sessions
    /// reached each of `stages` (names as progress records them) and how
    /// many are stalled.
    pub fn funnel_counts(&self, stages: &[&str]) -> Result<Vec<FunnelRow>, StoreError> {
        let reached: String = stages
            .iter()
            .map(|s| format!(", SUM(json_type(value, '$.reached.{s}') IS NOT NULL)"))
            .collect();
        let sql = format!(
            "SELECT json_extract(value, '$.template_key') AS t, SUM(json_extract(value, '$.stalled') IS 1){reached}
             FROM session_progress GROUP BY t ORDER BY t"
        );
        self.read(|c| {
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], |r| {
                let counts = (0..stages.len())
                    .map(|i| r.get::<_, i64>(i + 2))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((r.get::<_, Option<String>>(0)?, counts, r.get(1)?))
            })?;
            rows.collect()
        })
    }

    /// How many sessions are watched.
    pub fn watched_sessions(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM session_progress WHERE watched = 1")?
                .query_row([], |r| r.get(0))
        })
    }
}
