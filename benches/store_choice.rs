//! Choosing the embedded store: redb against SQLite (rusqlite, bundled),
//! both fully durable (fsync on every commit), on the outbox's work:
//!
//! - append: deliveries written in group commits of 256 rows;
//! - mark delivered: the same rows deleted, 256 per commit;
//! - recovery: 1,000,000 pending rows, then the time to open the store
//!   and walk one webhook's due-time index from the start.
//!
//! Run: `cargo bench --bench store_choice` (prints a table; takes about a
//! minute). `STORE_BENCH_ROWS` changes the recovery row count.

use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};

const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const DUE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("due");
const BATCH: usize = 256;
const THROUGHPUT_ROWS: usize = 50_000;

fn row(i: usize) -> Vec<u8> {
    // About the size of an outbox row: an envelope plus bookkeeping.
    let mut v = format!(r#"{{"webhook":"event_webhook","attempts":0,"event":{{"uuid":"event-{i:032}","embed_id":{i},"event_type":"columns_mapped","data":{{"validation_error_counts":{{"total":3}}}}}}}}"#).into_bytes();
    v.resize(512, b' ');
    v
}

struct Figures {
    append_per_s: f64,
    delete_per_s: f64,
    recovery: Duration,
    recovered: usize,
}

fn redb_bench(dir: &std::path::Path, recovery_rows: usize) -> Figures {
    let path = dir.join("outbox.redb");
    let db = Database::create(&path).unwrap();
    let t = Instant::now();
    for chunk in (0..THROUGHPUT_ROWS).collect::<Vec<_>>().chunks(BATCH) {
        let tx = db.begin_write().unwrap();
        {
            let mut outbox = tx.open_table(OUTBOX).unwrap();
            let mut due = tx.open_table(DUE).unwrap();
            for &i in chunk {
                outbox.insert(i as u64, row(i).as_slice()).unwrap();
                due.insert(("event_webhook", i as u64, i as u64), ())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let append_per_s = THROUGHPUT_ROWS as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in (0..THROUGHPUT_ROWS).collect::<Vec<_>>().chunks(BATCH) {
        let tx = db.begin_write().unwrap();
        {
            let mut outbox = tx.open_table(OUTBOX).unwrap();
            let mut due = tx.open_table(DUE).unwrap();
            for &i in chunk {
                outbox.remove(i as u64).unwrap();
                due.remove(("event_webhook", i as u64, i as u64)).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let delete_per_s = THROUGHPUT_ROWS as f64 / t.elapsed().as_secs_f64();
    // Recovery: fill, close, reopen, walk the due index.
    for chunk in (0..recovery_rows).collect::<Vec<_>>().chunks(20_000) {
        let tx = db.begin_write().unwrap();
        {
            let mut outbox = tx.open_table(OUTBOX).unwrap();
            let mut due = tx.open_table(DUE).unwrap();
            for &i in chunk {
                outbox.insert(i as u64, row(i).as_slice()).unwrap();
                due.insert(("event_webhook", i as u64, i as u64), ())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    drop(db);
    let t = Instant::now();
    let db = Database::create(&path).unwrap();
    let tx = db.begin_read().unwrap();
    let due = tx.open_table(DUE).unwrap();
    let recovered = due
        .range(("event_webhook", 0, 0)..("event_webhook", u64::MAX, u64::MAX))
        .unwrap()
        .count();
    Figures {
        append_per_s,
        delete_per_s,
        recovery: t.elapsed(),
        recovered,
    }
}

fn sqlite_bench(dir: &std::path::Path, recovery_rows: usize) -> Figures {
    let path = dir.join("outbox.sqlite");
    let open = || {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .unwrap();
        c
    };
    let mut c = open();
    c.execute_batch(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY, webhook TEXT NOT NULL, next_at INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE INDEX due ON outbox (webhook, next_at, id);",
    )
    .unwrap();
    let insert = |c: &mut rusqlite::Connection, rows: &[usize]| {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT INTO outbox (id, webhook, next_at, body) VALUES (?1, 'event_webhook', ?1, ?2)").unwrap();
            for &i in rows {
                st.execute(rusqlite::params![i as i64, row(i)]).unwrap();
            }
        }
        tx.commit().unwrap();
    };
    let t = Instant::now();
    for chunk in (0..THROUGHPUT_ROWS).collect::<Vec<_>>().chunks(BATCH) {
        insert(&mut c, chunk);
    }
    let append_per_s = THROUGHPUT_ROWS as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in (0..THROUGHPUT_ROWS).collect::<Vec<_>>().chunks(BATCH) {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .unwrap();
            for &i in chunk {
                st.execute([i as i64]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let delete_per_s = THROUGHPUT_ROWS as f64 / t.elapsed().as_secs_f64();
    for chunk in (0..recovery_rows).collect::<Vec<_>>().chunks(20_000) {
        insert(&mut c, chunk);
    }
    drop(c);
    let t = Instant::now();
    let c = open();
    let recovered: i64 = c
        .query_row("SELECT COUNT(*) FROM (SELECT id FROM outbox WHERE webhook = 'event_webhook' ORDER BY next_at, id)", [], |r| r.get(0))
        .unwrap();
    Figures {
        append_per_s,
        delete_per_s,
        recovery: t.elapsed(),
        recovered: recovered as usize,
    }
}

fn main() {
    // `cargo test --benches` runs benches once with --bench absent: skip the heavy work then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store_choice: run with `cargo bench --bench store_choice`");
        return;
    }
    let rows: usize = std::env::var("STORE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("| store | append rows/s (group commit of {BATCH}) | mark delivered rows/s | recovery of {rows} pending rows |");
    println!("| --- | --- | --- | --- |");
    for (name, f) in [
        (
            "redb 4",
            redb_bench as fn(&std::path::Path, usize) -> Figures,
        ),
        ("SQLite (rusqlite, WAL, synchronous=FULL)", sqlite_bench),
    ] {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let fig = f(dir.path(), rows);
        assert_eq!(fig.recovered, rows);
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} s |",
            fig.append_per_s,
            fig.delete_per_s,
            fig.recovery.as_secs_f64()
        );
    }
}
