//! A corpus of broken rules and config files (`tests/data/bad-rules/`):
//! `taphook check` on each exits 1 and prints exactly the expected
//! `file:line: reason` lines, each naming a line that exists.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables the corpus uses as unset.
const UNSET: &[&str] = &[
    "TAPHOOK_TEST_UNSET_ENV",
    "TAPHOOK_TEST_UNSET_SECRET",
    "TAPHOOK_TEST_UNSET_TOKEN",
];

/// The cases the corpus must hold (it may hold more).
const REQUIRED: &[&str] = &[
    "bad-yaml",
    "bad-yaml-eof",
    "bad-json",
    "bad-jsonlogic",
    "unknown-operator",
    "unknown-event",
    "unknown-permission",
    "duplicate-names",
    "duplicate-key",
    "unset-env",
    "bad-duration",
    "config-unset-env",
    "config-bad-cidr",
    "config-bad-duration",
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-rules")
}

fn cases() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// `taphook check` on one case, from the corpus directory: exit code,
/// stdout, stderr.
fn check(case: &str) -> (Option<i32>, String, String) {
    let root = corpus();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taphook"));
    cmd.current_dir(&root);
    if root.join(case).join("taphook.yaml").exists() {
        cmd.args(["check", "--config", &format!("{case}/taphook.yaml")]);
    } else {
        cmd.args(["check", "--rules", case]);
    }
    for name in UNSET {
        cmd.env_remove(name);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_broken_file_is_reported_at_its_line() {
    let cases = cases();
    for required in REQUIRED {
        assert!(
            cases.iter().any(|c| c == required),
            "case `{required}` is missing"
        );
    }
    let mut failures = Vec::new();
    for case in &cases {
        let expected = std::fs::read_to_string(corpus().join(case).join("expected.txt"))
            .unwrap_or_else(|_| panic!("{case}/expected.txt"));
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        assert!(!expected.is_empty(), "{case}: expected.txt is empty");
        let (code, stdout, stderr) = check(case);
        let got: Vec<&str> = stdout.lines().collect();
        if code != Some(1) || got != expected {
            failures.push(format!(
                "{case}: exit {code:?}\n  expected:\n    {}\n  got:\n    {}\n  stderr: {stderr}",
                expected.join("\n    "),
                got.join("\n    ")
            ));
            continue;
        }
        assert_eq!(
            stderr.trim(),
            format!("{} problem(s) found", expected.len()),
            "{case}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_expected_line_names_a_file_and_a_line_in_it() {
    for case in cases() {
        let expected = std::fs::read_to_string(corpus().join(&case).join("expected.txt")).unwrap();
        for line in expected.lines().filter(|l| !l.is_empty()) {
            let (file, rest) = line.split_once(':').expect(line);
            let (number, reason) = rest.split_once(": ").expect(line);
            let number: usize = number.parse().expect(line);
            assert!(
                file.starts_with(&format!("{case}/")),
                "{line}: a file of the case"
            );
            let text = std::fs::read_to_string(corpus().join(file)).expect(line);
            assert!(
                (1..=text.lines().count()).contains(&number),
                "{line}: line {number} is not in {file}"
            );
            assert!(!reason.trim().is_empty(), "{line}");
        }
    }
}
