//! Arbitrary text through the rules loader, as `taphook check` and a
//! reload read a rules file: it never panics, and every problem names a
//! line of the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use taphook::rules::source::Document;
use taphook::rules::{load_documents, Problems};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.yaml");
    // `${NAME}`: every variable is set, except `UNSET`.
    let env = |name: &str| (name != "UNSET").then(|| format!("value-of-{name}"));
    let problems = match Document::parse(path, &text, &env) {
        Ok(doc) => match load_documents(&[doc]) {
            Ok(rules) => {
                // Whatever loaded can be looked up.
                let _ = rules.routes.tap_plan("POST", "/v1/embeds");
                return;
            }
            Err(Problems(p)) => p,
        },
        Err(Problems(p)) => p,
    };
    assert!(!problems.is_empty());
    // YAML breaks lines at LF, CRLF and a lone CR.
    let lines =
        1 + text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count();
    for p in &problems {
        assert!(
            p.line >= 1 && p.line <= lines,
            "{p} (the file has {lines} lines)"
        );
        let _ = p.to_string();
    }
});
