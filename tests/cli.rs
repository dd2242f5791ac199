//! The command line: `check` reports every problem as `file:line: reason`
//! and exits 1; `eval` explains each webhook's verdict.

use std::path::Path;
use std::process::{Command, Output};

fn taphook(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taphook"));
    cmd.args(args).env_remove("TAPHOOK_UNSET_FOR_TEST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn check(dir: &Path) -> (i32, Vec<String>) {
    let out = taphook(&["check", "--rules", dir.to_str().unwrap()], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("{}/", dir.display());
    (
        out.status.code().unwrap(),
        text.lines().map(|l| l.replace(&prefix, "")).collect(),
    )
}

#[test]
fn the_shipped_rules_are_clean() {
    let out = taphook(&["check", "rules/"], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("ok: 4 file(s), 13 route(s), 1 webhook(s)"),
        "{text}"
    );
}

#[test]
fn every_problem_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        r#"routes:
  - name: create
    event: embed_initialized
    method: POST
    path: /v1/embeds
    when: {"and": [true, {"lenght": ["$x"]}]}
  - name: bad-path
    event: file_uploaded
    path: /v1/embeds/{id/upload
  - name: create
    event: embed_closed
    path: /v1/close
"#,
    );
    write(
        dir.path(),
        "b.yml",
        r#"webhooks:
  - key: hook
    url: http://127.0.0.1:1/x?token=${TAPHOOK_UNSET_FOR_TEST}
    events:
      - embed_initialized
      - embed_exploded
  - key: hook
    url: http://127.0.0.1:1/y
    events: ["*"]
    format: carrier-pigeon
    retry: { on: [teapot] }
"#,
    );
    write(dir.path(), "c.json", "{\n  \"routes\": [\n    {\"name\": \"x\", \"event\": \"e\", \"path\": \"/x\", \"extra\": 1}\n  ]\n}\n");
    write(dir.path(), "d.yaml", "routes:\n  - name: [unclosed\n");
    let (code, lines) = check(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "a.yaml:6: unknown operator `lenght`",
            "a.yaml:9: path `/v1/embeds/{id/upload`: a parameter must be a whole segment, like `{id}`",
            "a.yaml:10: duplicate route `create` (first defined at a.yaml:2)",
            "b.yml:3: environment variable `TAPHOOK_UNSET_FOR_TEST` is not set",
            "b.yml:6: unknown event type `embed_exploded` (no route derives it; known: embed_closed, embed_initialized, file_uploaded, session_stalled)",
            "b.yml:7: duplicate webhook `hook` (first defined at b.yml:2)",
            "b.yml:10: unknown format `carrier-pigeon` (expected oneschema, dromo, dromo-basic or flatfile)",
            "b.yml:11: invalid status `teapot`: expected e.g. 2xx or 200, `timeout` or `error`",
            "c.json:3: unknown field `extra`, expected one of `name`, `event`, `method`, `path`, `status`, `when`, `session`, `session_alias`, `remember`, `trigger`, `dedup_key`, `data`, `capture`, `description`",
            "d.yaml:2: while parsing a flow sequence, expected ',' or ']' (at the end of the file)",
        ],
        "{lines:#?}"
    );
}

#[test]
fn check_reads_a_config_and_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    write(
        &dir.path().join("rules"),
        "r.yaml",
        "routes:\n  - name: a\n    event: e\n    path: /a\n",
    );
    write(
        dir.path(),
        "taphook.yaml",
        "upstream: http://127.0.0.1:9000\nrules_dir: rules\n",
    );
    let out = taphook(
        &[
            "check",
            "--config",
            dir.path().join("taphook.yaml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 1 file(s), 1 route(s)"));
    write(
        dir.path(),
        "taphook.yaml",
        "upstream: ftp://127.0.0.1:9000\n",
    );
    let out = taphook(
        &[
            "check",
            "--config",
            dir.path().join("taphook.yaml").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("taphook.yaml:1: `upstream`: scheme `ftp` is not supported"));
}

/// The `funnel` and `log` sections: every problem with its line.
#[test]
fn check_names_bad_funnel_and_log_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let config = dir.path().join("taphook.yaml");
    let run_check = |text: &str| {
        write(dir.path(), "taphook.yaml", text);
        let out = taphook(&["check", "--config", config.to_str().unwrap()], &[]);
        let text =
            String::from_utf8_lossy(&out.stdout).replace(&format!("{}/", dir.path().display()), "");
        (out.status.code(), text)
    };
    let (code, out) = run_check(
        "upstream: http://127.0.0.1:9000\nfunnel:\n  stages:\n    uploaded: [file_uploaded]\n    mapped: [columns_mapped, file_uploaded]\n    reviewed: [x]\n",
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "taphook.yaml:5: `funnel.stages`: event type `file_uploaded` is in both `uploaded` and `mapped`",
            "taphook.yaml:6: `funnel.stages`: unknown stage `reviewed` (stages: initialized, uploaded, header_selected, mapped, submitted, closed)",
        ],
        "{out}"
    );
    let (code, out) = run_check("upstream: http://127.0.0.1:9000\nlog:\n  format: xml\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with(
            "taphook.yaml:3: `log.format`: unknown variant `xml`, expected `text` or `json`"
        ),
        "{out}"
    );
    let (code, out) = run_check("upstream: http://127.0.0.1:9000\nfunnel:\n  stall_after: 10m\n  max_template_keys: 5\nlog: {format: json}\n");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn eval_explains_each_webhook() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("rules/oneschema.yaml", dir.path().join("oneschema.yaml")).unwrap();
    write(
        dir.path(),
        "hooks.yaml",
        r#"webhooks:
  - key: assigned
    url: http://127.0.0.1:1/a
    events: ["*"]
    assignment: session
  - key: errors-only
    url: http://127.0.0.1:1/b
    events: [columns_mapped]
    filter: {">": ["$data.validation_error_counts.total", 0]}
  - key: uploads
    url: http://127.0.0.1:1/c
    events: [file_uploaded]
"#,
    );
    let event = r#"{"event": {"uuid": "event-1", "embed_id": 7, "embed_jwt": null, "environment_name": "Production",
      "template_key": "contacts", "event_type": "columns_mapped", "trigger_type": "user",
      "data": {"validation_error_counts": {"total": 0}}, "created_at": 1.0},
      "session": {"webhook_keys": ["assigned"]}}"#;
    // Outside the rules directory: every *.json file in it is a rules file.
    let event_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(event_file.path(), event).unwrap();
    let out = taphook(
        &[
            "eval",
            "--rules",
            dir.path().to_str().unwrap(),
            "--event",
            event_file.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "assigned deliver",
            "errors-only skip: filter is false: {\">\":[{\"var\":\"data.validation_error_counts.total\"},0]}",
            "uploads skip: not subscribed to `columns_mapped`",
        ]
    );
}

#[test]
fn a_taken_listen_port_stops_start_up_with_its_name() {
    // Held for the whole test: nobody else can take it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:9\nadmin_listen: {}\nrules_dir: rules\ndata_dir: data\n",
        free.local_addr().unwrap()
    );
    drop(free);
    write(dir.path(), "taphook.yaml", &config);
    let out = taphook(
        &[
            "run",
            "--config",
            dir.path().join("taphook.yaml").to_str().unwrap(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port} (listen)")),
        "{text}"
    );
}
