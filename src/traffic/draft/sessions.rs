//! The session key: the value that threads the most lifecycle steps.
//!
//! Every place a proposed route can read a value at (a path parameter, a
//! query parameter, a field, a header, a cookie, a field of the answer) is
//! a node; nodes that saw the same value are one *thread*: a task id
//! handed out by an upload's answer and carried by the polls' query, a
//! session cookie sent with every step. The thread readable in the most
//! lifecycle routes is the session key, preferring one that tells more
//! sessions apart, then one that is not a credential (a credential is read
//! through `hash`). A route without it joins through another thread: an
//! earlier route that has both names the other value as a
//! `session_alias`, and the route reads that value.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::evidence::{Place, Seen, Source};
use super::lifecycle::Proposal;

/// A place of one route, with the values its exchanges had there.
struct Node {
    route: usize,
    place: Place,
    values: BTreeSet<String>,
    /// Every exchange of the route had a value there.
    everywhere: bool,
    /// Where it was seen first: the entry, and 1 on the answer's side.
    first: (usize, u8),
}

/// Places the session key and its aliases in every proposal.
pub fn thread(seen: &[Seen<'_>], props: &mut [Proposal]) {
    let nodes = nodes(seen, props);
    let threads = threads(&nodes);
    let mut placed = vec![false; props.len()];
    // Each round keys the routes not placed yet: a recording may hold
    // sessions of two kinds (an embed id, a headless import's id).
    while let Some(key) = best(&nodes, &threads, props, &placed, seen) {
        place(&nodes, &threads, props, &mut placed, key);
        join_through_aliases(&nodes, &threads, props, &mut placed, seen);
    }
    for (r, p) in props.iter_mut().enumerate() {
        if !placed[r] {
            p.session_why.push(
                "no session: none of its exchanges carries the session key or a value joined to it"
                    .into(),
            );
        }
        if let Some(id) = p.poll_id.clone() {
            p.dedup_key = Some(id);
        } else if p.when.is_some() && p.event.starts_with("import_") {
            p.dedup_key = p.session.clone();
        }
    }
}

/// Gives every route not placed yet that reads thread `key` its session.
fn place(
    nodes: &[Node],
    threads: &[usize],
    props: &mut [Proposal],
    placed: &mut [bool],
    key: usize,
) {
    let covered = unplaced_coverage(nodes, threads, key, props, &vec![false; props.len()]);
    for (r, p) in props.iter_mut().enumerate() {
        if placed[r] {
            continue;
        }
        if let Some(n) = choose(nodes, threads, r, key) {
            p.session = n.place.read.clone();
            p.session_why.push(format!(
                "session: the {}{}, which threads {} lifecycle step(s)",
                n.place.describe(),
                if n.place.credential { ", hashed" } else { "" },
                covered
            ));
            placed[r] = true;
        }
    }
}

/// Every readable place of every route's exchanges.
fn nodes(seen: &[Seen<'_>], props: &[Proposal]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for (r, p) in props.iter().enumerate() {
        let mut mine: Vec<Node> = Vec::new();
        for &i in &p.exchanges {
            for c in &seen[i].carried {
                if c.place.read.is_none() {
                    continue;
                }
                let at = (seen[i].entry, u8::from(!c.place.source.request_side()));
                match mine.iter_mut().find(|n| n.place == c.place) {
                    Some(n) => {
                        n.values.insert(c.value.clone());
                        n.first = n.first.min(at);
                    }
                    None => mine.push(Node {
                        route: r,
                        place: c.place.clone(),
                        values: BTreeSet::from([c.value.clone()]),
                        everywhere: false,
                        first: at,
                    }),
                }
            }
        }
        for n in &mut mine {
            n.everywhere = p
                .exchanges
                .iter()
                .all(|&i| seen[i].value_at(&n.place).is_some());
        }
        out.extend(mine);
    }
    out
}

/// The thread of each node: nodes that saw a value in common are one.
fn threads(nodes: &[Node]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..nodes.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for v in &n.values {
            match first.get(v.as_str()) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a] = b;
                }
                None => {
                    first.insert(v, i);
                }
            }
        }
    }
    (0..nodes.len()).map(|i| root(&mut parent, i)).collect()
}

/// The session key's thread: the one that, with the aliases that join to
/// it, places the most lifecycle routes (a session starts at its first
/// step: a file id handed out by the upload beats the import id the
/// submit step hands out, which joins it); then the one read directly in
/// the most; then the one with the most distinct values (it tells more
/// sessions apart); then one the importer minted (first seen in an
/// answer); then not a credential; then one whose names say session.
fn best(
    nodes: &[Node],
    threads: &[usize],
    props: &[Proposal],
    placed: &[bool],
    seen: &[Seen<'_>],
) -> Option<usize> {
    let all: BTreeSet<usize> = nodes
        .iter()
        .zip(threads)
        .filter(|(n, _)| !placed[n.route])
        .map(|(_, t)| *t)
        .collect();
    let routes_of = |t: usize| {
        nodes
            .iter()
            .zip(threads)
            .filter(|(n, th)| **th == t && !placed[n.route])
            .map(|(n, _)| n.route)
            .collect::<BTreeSet<usize>>()
            .len()
    };
    // A thread that joins two steps, if there is one.
    let joining: Vec<usize> = all.iter().copied().filter(|&t| routes_of(t) >= 2).collect();
    let candidates = if joining.is_empty() {
        all.into_iter().collect()
    } else {
        joining
    };
    candidates
        .into_iter()
        .filter(|&t| unplaced_coverage(nodes, threads, t, props, placed) > 0)
        .max_by_key(|&t| {
            let members = || nodes.iter().zip(threads).filter(move |(_, th)| **th == t);
            let credential = members().all(|(n, _)| n.place.credential);
            let sessionish = members().any(|(n, _)| {
                let name = n.place.name.to_ascii_lowercase();
                name.contains("sess") || name.contains("sid")
            });
            // Minted by the importer: first seen in an answer (an id it
            // made), not sent first by the client (a setting).
            let minted = members()
                .map(|(n, _)| n.first)
                .min()
                .is_some_and(|f| f.1 == 1);
            (
                joined(nodes, threads, props, placed, seen, t),
                unplaced_coverage(nodes, threads, t, props, placed),
                distinct(nodes, threads, t),
                minted,
                !credential,
                sessionish,
                std::cmp::Reverse(t),
            )
        })
}

/// Lifecycle routes that keying thread `t` would place, aliases included.
fn joined(
    nodes: &[Node],
    threads: &[usize],
    props: &[Proposal],
    placed: &[bool],
    seen: &[Seen<'_>],
    t: usize,
) -> usize {
    let mut props = props.to_vec();
    let mut after = placed.to_vec();
    place(nodes, threads, &mut props, &mut after, t);
    join_through_aliases(nodes, threads, &mut props, &mut after, seen);
    (0..props.len())
        .filter(|&r| after[r] && !placed[r] && props[r].lifecycle())
        .count()
}

/// Lifecycle routes not placed yet that the thread can be read in.
fn unplaced_coverage(
    nodes: &[Node],
    threads: &[usize],
    t: usize,
    props: &[Proposal],
    placed: &[bool],
) -> usize {
    nodes
        .iter()
        .zip(threads)
        .filter(|(n, th)| {
            **th == t && n.everywhere && !placed[n.route] && props[n.route].lifecycle()
        })
        .map(|(n, _)| n.route)
        .collect::<BTreeSet<_>>()
        .len()
}

fn distinct(nodes: &[Node], threads: &[usize], t: usize) -> usize {
    nodes
        .iter()
        .zip(threads)
        .filter(|(_, th)| **th == t)
        .flat_map(|(n, _)| n.values.iter())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Where route `r` reads thread `t`: a place every exchange has; then
/// the request's side (the client had the value before this step); then
/// a path or query parameter before a field, a header or a cookie.
fn choose<'n>(nodes: &'n [Node], threads: &[usize], r: usize, t: usize) -> Option<&'n Node> {
    nodes
        .iter()
        .zip(threads)
        .filter(|(n, th)| **th == t && n.route == r)
        .map(|(n, _)| n)
        .min_by_key(|n| {
            (
                !n.everywhere,
                !n.place.source.request_side(),
                n.place.credential,
                rank(n.place.source),
                n.place.name.len(),
            )
        })
}

fn rank(s: Source) -> u8 {
    match s {
        Source::Param => 0,
        Source::Query => 1,
        Source::RequestBody => 2,
        Source::ResponseBody => 3,
        Source::Header => 4,
        Source::Cookie => 5,
        Source::Location => 6,
    }
}

/// Routes without the key join through another thread that an earlier
/// route with the key also reads: that route names the value as a
/// `session_alias`, this one reads it as its `session`.
fn join_through_aliases(
    nodes: &[Node],
    threads: &[usize],
    props: &mut [Proposal],
    placed: &mut [bool],
    seen: &[Seen<'_>],
) {
    let first = |p: &Proposal| p.exchanges.first().map_or(usize::MAX, |&i| seen[i].entry);
    loop {
        let mut joined = None;
        'routes: for r in (0..props.len()).filter(|&r| !placed[r]) {
            let mut mine: Vec<(&Node, usize)> = nodes
                .iter()
                .zip(threads.iter().copied())
                .filter(|(n, _)| n.route == r && n.everywhere)
                .collect();
            mine.sort_by_key(|(n, _)| (n.place.credential, rank(n.place.source)));
            for (n, t) in mine {
                let earlier = nodes.iter().zip(threads).find(|(m, th)| {
                    **th == t
                        && placed[m.route]
                        && m.route != r
                        && first(&props[m.route]) < first(&props[r])
                });
                if let Some((m, _)) = earlier {
                    joined = Some((r, n.place.clone(), m.route, m.place.clone()));
                    break 'routes;
                }
            }
        }
        let Some((r, place, r0, place0)) = joined else {
            return;
        };
        let alias = place0.read.clone().unwrap_or(Value::Null);
        if !props[r0].session_alias.contains(&alias) {
            props[r0].session_alias.push(alias);
            let why = format!(
                "session_alias: its {}, which a later step carries as its session",
                place0.describe()
            );
            props[r0].session_why.push(why);
        }
        props[r].session = place.read.clone();
        props[r].session_why.push(format!(
            "session: the {}, joined to the session by route `{}`'s session_alias",
            place.describe(),
            props[r0].event
        ));
        placed[r] = true;
    }
}

/// `["$params.task_id"]`-style keys are written as a list.
pub fn dedup_list(key: &Value) -> Value {
    match key {
        Value::Array(_) => key.clone(),
        other => json!([other]),
    }
}
