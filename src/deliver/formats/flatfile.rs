//! Flatfile: the event's rows (`data.valid_rows`, `data.invalid_rows`)
//! in requests of at most 1,000 records, numbered by `sequence`, so a
//! receiver can rebuild the batch and a failed part is retried alone.

use serde_json::{json, Value};

use super::{field, json_request, Outgoing};
use crate::event::DerivedEvent;

/// Records per request at most.
pub const BATCH_SIZE: usize = 1000;

fn rows<'a>(event: &'a DerivedEvent, name: &str) -> &'a [Value] {
    field(event, name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn requests(event: &DerivedEvent) -> Vec<Outgoing> {
    let valid = rows(event, "valid_rows");
    let invalid = rows(event, "invalid_rows");
    let total = valid.len() + invalid.len();
    let count = total.div_ceil(BATCH_SIZE).max(1);
    let batch_id = field(event, "batch_id")
        .unwrap_or(&event.event.embed_id)
        .clone();
    let schema_id = field(event, "schema_id").cloned().unwrap_or(Value::Null);
    (0..count)
        .map(|i| {
            // Records i*1000 .. (i+1)*1000 of valid rows, then invalid rows.
            let (start, end) = (i * BATCH_SIZE, ((i + 1) * BATCH_SIZE).min(total));
            let valid_part = &valid[start.min(valid.len())..end.min(valid.len())];
            let invalid_part = &invalid[start.saturating_sub(valid.len())..end.saturating_sub(valid.len())];
            let body = json!({
                "event": {
                    "id": event.event.uuid,
                    "type": event.event.event_type,
                    "sequence": {"count": count, "index": i + 1},
                },
                "data": {
                    "meta": {"batch": {"id": batch_id}, "schema": {"id": schema_id}, "count": valid_part.len() + invalid_part.len()},
                    "validRows": valid_part,
                    "invalidRows": invalid_part,
                },
            });
            json_request(format!("{}-{}", event.event.uuid, i + 1), &body)
        })
        .collect()
}
