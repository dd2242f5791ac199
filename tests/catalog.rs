//! The event catalog (issue 27): the admin API serves an AsyncAPI 3.0
//! document and a JSON Schema (2020-12) per format and event type,
//! generated from the rules in force; the official AsyncAPI parser
//! (`@asyncapi/parser`, from npm, run by this test) accepts the document;
//! `taphook catalog` writes the same files; a payload that is not what
//! taphook delivers fails its schema. (Every payload the contract tests
//! receive is checked against its schema there: `assert_in_catalog`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "catalog-t0ken";
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn rules() -> Vec<(&'static str, String)> {
    let hooks = [
        webhook(
            "signed",
            "/hooks/signed",
            &format!("    events: [embed_initialized, import_submitted]\n    secret: s3cret\n    filter: {{\"==\": [{{\"var\": \"template_key\"}}, \"contacts\"]}}\n    signing: {{ scheme: standard-webhooks, secrets: [{SECRET_A}] }}\n    retry: {{ backoff: [1s, 1m] }}\n"),
        ),
        webhook("dromo", "/hooks/dromo", "    format: dromo\n    events: [import_completed]\n"),
        webhook("basic", "/hooks/basic", "    format: dromo-basic\n    events: [import_completed]\n"),
        webhook("flatfile", "/hooks/flatfile", "    format: flatfile\n    events: [batch.update]\n"),
    ];
    // A destination that is not HTTP (never reached here: nothing listens).
    let bus = "  - key: bus\n    url: nats://user:pw@127.0.0.1:9/importer.{event_type}\n    events: [import_submitted]\n";
    vec![("hooks.yaml", format!("webhooks:\n{}{bus}", hooks.concat()))]
}

async fn stack() -> Stack {
    Stack::start(Setup {
        rules: rules(),
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await
}

/// `@asyncapi/parser`, installed from npm into `target/asyncapi-parser`
/// once (`make test-prereqs` does it too); the directory holding its
/// `node_modules`.
fn asyncapi_parser() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/asyncapi-parser");
    let installed = dir.join("node_modules/@asyncapi/parser/package.json");
    if !installed.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("@asyncapi/parser@3.6.6")
            .output()
            .expect("npm (make test-prereqs installs it)");
        assert!(
            out.status.success(),
            "npm install @asyncapi/parser: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Runs the official parser on `doc`; its diagnostics of severity error,
/// or `Ok` with every diagnostic it printed.
fn parse_with_asyncapi(doc: &Value) -> Result<String, String> {
    let dir = asyncapi_parser();
    let file = dir.join(format!("doc-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    let script = r#"
const { Parser } = require('@asyncapi/parser');
const fs = require('fs');
(async () => {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(process.argv[2], 'utf8'));
  for (const d of diagnostics) console.log(d.severity, d.code, d.message, JSON.stringify(d.path));
  const errors = diagnostics.filter(d => d.severity === 0);
  process.exit(document && errors.length === 0 ? 0 : 1);
})();
"#;
    let runner = dir.join("parse.js");
    std::fs::write(&runner, script).unwrap();
    let out = Command::new("node")
        .current_dir(&dir)
        .arg(&runner)
        .arg(&file)
        .output()
        .expect("node");
    let _ = std::fs::remove_file(&file);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_a_catalog_the_asyncapi_parser_accepts() {
    let stack = stack().await;
    let (status, doc) = stack
        .api(TOKEN, "GET", "/v1/catalog/asyncapi.json", None)
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["asyncapi"], "3.0.0");
    // Each webhook a server and a channel; its events, format, filter,
    // signature scheme and retry policy.
    let signed = &doc["operations"]["deliver_signed"];
    assert_eq!(signed["action"], "send");
    assert_eq!(signed["x-taphook-format"], "oneschema");
    assert_eq!(signed["x-taphook-signature"], "standard-webhooks");
    assert_eq!(
        signed["x-taphook-filter"],
        json!({"==": [{"var": "template_key"}, "contacts"]})
    );
    assert_eq!(signed["x-taphook-retry"]["backoff"], json!(["1s", "1m"]));
    assert!(signed["description"]
        .as_str()
        .unwrap()
        .contains("JSON-logic filter"));
    let messages: Vec<&String> = doc["channels"]["signed"]["messages"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(messages, ["embed_initialized", "import_submitted"]);
    assert!(
        doc["channels"]["signed"]["messages"]["import_submitted"]["headers"]["schema"]
            ["properties"]["webhook-signature"]
            .is_object()
    );
    assert_eq!(doc["servers"]["signed"]["security"][0]["scheme"], "basic");
    assert_eq!(
        doc["channels"]["basic"]["messages"]["import_completed"]["contentType"],
        "application/x-www-form-urlencoded"
    );
    assert!(doc["channels"]["flatfile"]["messages"]["batch.update"].is_object());
    assert_eq!(doc["channels"]["bus"]["address"], "importer.{event_type}");
    assert_eq!(doc["servers"]["bus"]["protocol"], "nats");
    assert_eq!(
        doc["operations"]["deliver_bus"]["x-taphook-destination"],
        "nats"
    );
    // No webhook secret or signing key anywhere in it.
    let text = doc.to_string();
    assert!(!text.contains("s3cret") && !text.contains(SECRET_A) && !text.contains("user:pw"));
    // The official parser accepts it.
    if let Err(diagnostics) = parse_with_asyncapi(&doc) {
        panic!("@asyncapi/parser refused the document:\n{diagnostics}");
    }
    // ... and refuses a broken copy (the check can fail).
    let mut broken = doc.clone();
    broken["operations"]["deliver_signed"]["action"] = json!("publish");
    assert!(parse_with_asyncapi(&broken).is_err());

    // The schemas, one per format and event type.
    let (status, schema) = stack
        .api(
            TOKEN,
            "GET",
            "/v1/catalog/schemas/oneschema/import_submitted.json",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(
        schema,
        catalog_schema(&stack, "oneschema", "import_submitted")
    );
    let (status, _) = stack
        .api(
            TOKEN,
            "GET",
            "/v1/catalog/schemas/standard-webhooks/import_submitted.json",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = stack
        .api(
            TOKEN,
            "GET",
            "/v1/catalog/schemas/xml/import_submitted.json",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_format"))
    );
    let (status, body) = stack
        .api(
            TOKEN,
            "GET",
            "/v1/catalog/schemas/oneschema/nothing_derives_this.json",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_event_type"))
    );
    // A token is needed, like the rest of /v1.
    let r = stack
        .client
        .get(format!("http://{}/v1/catalog/asyncapi.json", stack.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_taphook_would_not_send_fails_its_schema() {
    let stack = stack().await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/signed", 1, std::time::Duration::from_secs(10))
        .await;
    let body = got[0].json();
    assert_in_catalog(&stack, "oneschema", "embed_initialized", &body);
    let schema = catalog_schema(&stack, "oneschema", "embed_initialized");
    for (what, broken) in [
        ("no uuid", {
            let mut b = body.clone();
            b.as_object_mut().unwrap().remove("uuid");
            b
        }),
        ("another event type", {
            let mut b = body.clone();
            b["event_type"] = json!("import_submitted");
            b
        }),
        ("created_at as text", {
            let mut b = body.clone();
            b["created_at"] = json!("yesterday");
            b
        }),
        ("a field taphook never sends", {
            let mut b = body.clone();
            b["extra"] = json!(1);
            b
        }),
    ] {
        assert!(
            !schema_errors(&schema, &broken).is_empty(),
            "{what} passed the schema"
        );
    }
    let headers = signature_headers(&got[0]);
    assert!(schema_errors(
        &catalog_schema(&stack, "standard-webhooks", "embed_initialized"),
        &headers
    )
    .is_empty());
    let mut forged = headers.clone();
    forged["webhook-signature"] = json!("v2,abc");
    assert!(!schema_errors(
        &catalog_schema(&stack, "standard-webhooks", "embed_initialized"),
        &forged
    )
    .is_empty());
}

#[test]
fn taphook_catalog_writes_the_document_and_every_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["catalog", "--rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("asyncapi.json")).unwrap()).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    for format in [
        "oneschema",
        "dromo",
        "dromo-basic",
        "flatfile",
        "standard-webhooks",
    ] {
        let schema: Value = serde_json::from_slice(
            &std::fs::read(
                dir.path()
                    .join(format!("schemas/{format}/import_submitted.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(jsonschema::meta::is_valid(&schema), "{format}");
    }
    // Without --out: the document on stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["catalog", "--rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc);
    // `taphook check` reads the catalog too.
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["check", "--rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("JSON Schemas (2020-12)") && text.contains("references all resolve"),
        "{text}"
    );
}
