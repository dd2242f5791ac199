//! The draft against a corpus of real importers (`tests/data/importers/`):
//! each holds a recording made through `taphook record` (`session.har`: a
//! successful session and a failing one) and the routes a person wrote
//! for it (`rules/`). The untouched draft of each recording is run through
//! the same explain code as the person's routes, and scored:
//!
//! - recall: the share of the person's lifecycle events that the draft
//!   derives from the same exchange, with the same type and the same
//!   session grouping;
//! - precision: the share of the draft's events that claim a lifecycle
//!   type (OneSchema's, `import_succeeded`, `import_failed`) and match one.
//!   Events the draft names after a path count neither way.
//!
//! Goal: both at least 80% on every importer. Every route the draft
//! writes must also fire on the recording it came from, pass `taphook
//! check` without a warning, and no credential of the recording may
//! reach an event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use taphook::traffic::draft::{lifecycle::LIFECYCLE, Draft};
use taphook::traffic::explain::{explain, ExchangeReport};
use taphook::traffic::har;

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/importers");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("session.har").is_file() && p.join("rules").is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A derived event: the exchange it came from, its type, its session, the
/// route that gave it.
#[derive(Debug, Clone)]
struct Derived {
    entry: usize,
    event_type: String,
    session: Value,
    route: String,
    data: Value,
}

fn events(reports: &[ExchangeReport]) -> Vec<Derived> {
    reports
        .iter()
        .flat_map(|r| {
            r.events.iter().filter(|e| !e.duplicate).map(|e| Derived {
                entry: r.entry,
                event_type: e.event_type.clone(),
                session: e.embed_id.clone(),
                route: e.route.clone(),
                data: e.data.clone(),
            })
        })
        .collect()
}

fn lifecycle(e: &Derived) -> bool {
    LIFECYCLE.contains(&e.event_type.as_str())
}

/// Matched pairs (hand, draft): the same exchange and type, the draft
/// event used once.
fn pairs(hand: &[Derived], draft: &[Derived]) -> Vec<(usize, usize)> {
    let mut used = vec![false; draft.len()];
    let mut out = Vec::new();
    for (h, he) in hand.iter().enumerate() {
        if let Some(d) = (0..draft.len()).find(|&d| {
            !used[d] && draft[d].entry == he.entry && draft[d].event_type == he.event_type
        }) {
            used[d] = true;
            out.push((h, d));
        }
    }
    out
}

/// The pairs whose session grouping agrees with every other pair's: two
/// events share a hand-written session exactly when they share a drafted
/// one. A hand-written event with no session asserts no grouping.
fn grouped(hand: &[Derived], draft: &[Derived], pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let same = |a: &Value, b: &Value| !a.is_null() && a == b;
    pairs
        .iter()
        .copied()
        .filter(|&(h, d)| {
            hand[h].session.is_null()
                || pairs.iter().all(|&(h2, d2)| {
                    hand[h2].session.is_null()
                        || same(&hand[h].session, &hand[h2].session)
                            == same(&draft[d].session, &draft[d2].session)
                })
        })
        .collect()
}

struct Score {
    name: String,
    hand: usize,
    drafted: usize,
    correct: usize,
    recall: f64,
    precision: f64,
}

fn score(dir: &Path) -> (Score, Draft, Vec<Derived>) {
    let text = std::fs::read_to_string(dir.join("session.har")).unwrap();
    let recorded = har::read(&text).unwrap();
    let hand_rules = taphook::rules::load_dir(&dir.join("rules"), &|_| None).unwrap();
    let draft = Draft::of(&recorded);
    let draft_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        draft_dir.path().join("draft.yaml"),
        draft.render("session.har", true),
    )
    .unwrap();
    let draft_rules = taphook::rules::load_dir(draft_dir.path(), &|_| None)
        .unwrap_or_else(|p| panic!("{}: the draft does not load:\n{p}", dir.display()));
    assert!(
        draft_rules.warnings.is_empty(),
        "{}: check warns about the draft: {:?}",
        dir.display(),
        draft_rules.warnings
    );
    let hand: Vec<Derived> = events(&explain(&hand_rules, &recorded, "Production"))
        .into_iter()
        .filter(lifecycle)
        .collect();
    let all_drafted = events(&explain(&draft_rules, &recorded, "Production"));
    let drafted: Vec<Derived> = all_drafted
        .iter()
        .filter(|e| lifecycle(e))
        .cloned()
        .collect();
    let correct = grouped(&hand, &drafted, &pairs(&hand, &drafted)).len();
    let ratio = |n: usize, of: usize| if of == 0 { 1.0 } else { n as f64 / of as f64 };
    (
        Score {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            hand: hand.len(),
            drafted: drafted.len(),
            correct,
            recall: ratio(correct, hand.len()),
            precision: ratio(correct, drafted.len()),
        },
        draft,
        all_drafted,
    )
}

#[test]
fn the_draft_finds_each_real_importers_lifecycle() {
    let dirs = corpus();
    assert!(dirs.len() >= 3, "the corpus holds {} importers", dirs.len());
    let mut table =
        String::from("importer                   hand  drafted  matched  recall  precision\n");
    let mut missed = Vec::new();
    for dir in &dirs {
        let (s, _, _) = score(dir);
        table.push_str(&format!(
            "{:<26} {:>4}  {:>7}  {:>7}  {:>5.0}%  {:>8.0}%\n",
            s.name,
            s.hand,
            s.drafted,
            s.correct,
            s.recall * 100.0,
            s.precision * 100.0
        ));
        assert!(
            s.hand > 0,
            "{}: the hand-written routes give no event",
            s.name
        );
        if s.recall < 0.8 || s.precision < 0.8 {
            missed.push(s.name.clone());
        }
    }
    println!("{table}");
    assert!(missed.is_empty(), "below 80% on {missed:?}:\n{table}");
}

#[test]
fn every_drafted_route_fires_on_its_recording() {
    for dir in corpus() {
        let (_, draft, derived) = score(&dir);
        let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &derived {
            *fired.entry(e.route.as_str()).or_default() += 1;
        }
        for r in &draft.routes {
            assert!(
                fired.contains_key(r.name.as_str()),
                "{}: route {} ({} from {}) derived nothing",
                dir.display(),
                r.name,
                r.event,
                r.from
            );
        }
    }
}

#[test]
fn no_credential_of_a_recording_reaches_an_event() {
    for dir in corpus() {
        let text = std::fs::read_to_string(dir.join("session.har")).unwrap();
        let recorded = har::read(&text).unwrap();
        // Every cookie value the recording holds (pseudonyms: the real
        // values were never written), as the draft's events would carry
        // them if a session key took one raw.
        let mut secrets: Vec<String> = Vec::new();
        for r in &recorded {
            if let Some(c) = r.exchange.request_header("cookie") {
                secrets.extend(
                    c.split(';')
                        .filter_map(|p| p.split_once('=').map(|(_, v)| v.trim().to_string())),
                );
            }
        }
        assert!(
            secrets.iter().all(|s| s.starts_with("redacted:")),
            "{}: a cookie value in the recording is not a pseudonym",
            dir.display()
        );
        // The pages' hidden CSRF fields too.
        for (at, _) in text.match_indices("csrf") {
            let rest = &text[at..text.len().min(at + 120)];
            let field = "value=\\\"";
            if let Some(v) = rest.find(field) {
                let value = &rest[v + field.len()..];
                assert!(
                    value.starts_with("redacted:"),
                    "{}: a CSRF field in clear: {rest}",
                    dir.display()
                );
            }
        }
        let (_, _, derived) = score(&dir);
        for e in &derived {
            let shown = format!("{} {}", e.session, e.data);
            for s in &secrets {
                assert!(
                    !shown.contains(s.as_str()),
                    "{}: event {} carries a cookie value",
                    dir.display(),
                    e.event_type
                );
            }
        }
    }
}
