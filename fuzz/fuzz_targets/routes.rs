//! Path template matching: a route table built from arbitrary templates,
//! looked up with arbitrary paths. Nothing panics; `tap_plan` (what the
//! proxy asks per request) agrees with `lookup` (what derive asks after
//! the response); every route's own template, with its parameters filled
//! in, finds a route; parameters come back one per name.
//!
//! Input: lines. Up to a line `--`, routes: `[METHOD] /template`; after
//! it, requests: `METHOD /path`.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use taphook::derive::routes::{parse_template, RouteTable};
use taphook::rules::model::{Origin, Route, StatusMatch, StatusRule, Template};

fn route(i: usize, methods: Vec<String>, path: &str, params: Vec<String>) -> Route {
    Route {
        name: format!("r{i}"),
        event: "e".into(),
        methods,
        path: path.to_string(),
        params,
        status: StatusMatch(vec![StatusRule::Class(2)]),
        when: None,
        session: None,
        remember: Vec::new(),
        trigger: None,
        dedup_key: None,
        data: Template::empty(),
        capture_max: (i % 3 != 0).then_some(i * 1000),
        origin: Origin {
            file: PathBuf::from("fuzz.yaml"),
            line: i + 1,
        },
    }
}

fn split_method(line: &str) -> (Option<&str>, &str) {
    match line.split_once(' ') {
        Some((m, p)) if !m.starts_with('/') => (Some(m), p),
        _ => (None, line),
    }
}

/// The template with every parameter filled in.
fn fill(template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "x"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut parsed = Vec::new();
    for line in lines.by_ref().take(64) {
        if line == "--" {
            break;
        }
        let (method, template) = split_method(line);
        if let Ok((_, params)) = parse_template(template) {
            let methods = method
                .map(|m| vec![m.to_ascii_uppercase()])
                .unwrap_or_default();
            parsed.push((methods, template.to_string(), params));
        }
    }
    let requests: Vec<(String, String)> = lines
        .take(64)
        .map(|l| {
            let (m, p) = split_method(l);
            (m.unwrap_or("GET").to_string(), p.to_string())
        })
        .collect();
    let build = |any_method: bool| {
        RouteTable::build(
            parsed
                .iter()
                .enumerate()
                .map(|(i, (methods, template, params))| {
                    let methods = if any_method {
                        Vec::new()
                    } else {
                        methods.clone()
                    };
                    route(i, methods, template, params.clone())
                })
                .collect(),
        )
    };
    let Ok(table) = build(false) else {
        // Conflicting templates are refused, whatever the methods.
        assert!(build(true).is_err());
        return;
    };
    let any = build(true).expect("the same templates build");
    let own: Vec<(String, String)> = parsed
        .iter()
        .map(|(methods, template, _)| {
            let method = methods.first().cloned().unwrap_or_else(|| "GET".into());
            (method, fill(template))
        })
        .collect();
    for (method, path) in requests.iter().chain(&own) {
        let found = table.lookup(method, path);
        match (table.tap_plan(method, path), found.first()) {
            (None, None) => {}
            (Some((name, cap)), Some(first)) => {
                assert_eq!(name, first.route.name);
                let max = found.iter().map(|m| m.route.capture_max).max().flatten();
                assert_eq!(cap, max);
            }
            _ => panic!("tap_plan and lookup disagree on {method} {path}"),
        }
        for m in &found {
            assert_eq!(m.params.len(), m.route.params.len(), "{method} {path}");
        }
    }
    // Every template matches its own paths (maybe through another route,
    // as static segments win over parameters).
    for (_, path) in &own {
        assert!(!any.lookup("GET", path).is_empty(), "no route for {path}");
    }
});
