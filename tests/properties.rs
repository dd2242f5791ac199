//! Properties of the functions that read hostile bytes, checked on
//! generated inputs (proptest): the streaming multipart scanner, body
//! copies and decoding, the exchange document and derive, route
//! matching and JWT claims. The fuzz targets in `fuzz/` check the same
//! functions coverage-guided (`make fuzz`); these run with `cargo test`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value};
use taphook::derive::exchange::{decode, Budget, Captured, Exchange, FilePart, MAX_CODINGS};
use taphook::derive::jwt;
use taphook::derive::routes::{parse_template, RouteTable};
use taphook::derive::Deriver;
use taphook::proxy::multipart::{MultipartScanner, MAX_BUFFERED};
use taphook::rules::model::{Origin, Route, StatusMatch, StatusRule, Template};
use taphook::rules::source::Document;
use taphook::rules::{load_documents, Rules};
use taphook::store::MemorySessions;

/// Cuts `data` at the given chunk sizes (the last chunk takes the rest).
fn chunks<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &n in sizes {
        if rest.is_empty() {
            break;
        }
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

// ---------------------------------------------------------------------------
// Multipart

/// One part: field name, filename (if a file), content type, content.
type Part = (String, Option<String>, Option<String>, Vec<u8>);

fn part() -> impl Strategy<Value = Part> {
    (
        "[a-z]{1,8}",
        proptest::option::of("[a-zA-Z0-9._]{1,12}"),
        proptest::option::of("(text/csv|application/octet-stream)"),
        // Content never holds a delimiter: no `-`, no CR.
        vec(
            prop_oneof![
                Just(b'a'),
                Just(b'\n'),
                Just(b'\x00'),
                Just(0xffu8),
                Just(b' ')
            ],
            0..64,
        ),
    )
}

fn multipart_body(parts: &[Part], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, filename, content_type, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{field}\"");
        if let Some(f) = filename {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(ct) = content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// Feeds `body` whole and in `sizes` chunks; both must agree, and the
/// scanner must hold at most `MAX_BUFFERED` bytes between chunks.
fn scan(content_type: &str, body: &[u8], sizes: &[usize]) -> Option<Vec<FilePart>> {
    let mut whole = MultipartScanner::for_content_type(content_type)?;
    whole.feed(body);
    let mut cut = MultipartScanner::for_content_type(content_type).unwrap();
    for chunk in chunks(body, sizes) {
        cut.feed(chunk);
        assert!(
            cut.buffered() <= MAX_BUFFERED,
            "{} bytes held",
            cut.buffered()
        );
    }
    let files = whole.into_files();
    assert_eq!(
        files,
        cut.into_files(),
        "the chunking changed the parts found"
    );
    Some(files)
}

proptest! {
    #[test]
    fn multipart_finds_the_file_parts_however_the_body_is_cut(
        parts in vec(part(), 0..8),
        boundary in "[a-zA-Z0-9'()+_,./:=?]{1,70}",
        sizes in vec(1usize..80, 0..40),
    ) {
        let body = multipart_body(&parts, &boundary);
        let files = scan(&format!("multipart/form-data; boundary=\"{boundary}\""), &body, &sizes).unwrap();
        let expected: Vec<FilePart> = parts
            .iter()
            .filter_map(|(field, filename, ct, _)| {
                filename.as_ref().map(|f| FilePart {
                    field: field.clone(),
                    filename: f.clone(),
                    content_type: ct.clone(),
                })
            })
            .collect();
        prop_assert_eq!(files, expected);
    }

    #[test]
    fn multipart_arbitrary_bytes_never_break_the_scanner(
        boundary in "[a-zA-Z0-9-]{1,10}",
        noise in vec(prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"--".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n".to_vec()),
            Just(b" \t".to_vec()),
            vec(any::<u8>(), 0..16),
        ], 0..60),
        sizes in vec(1usize..32, 0..60),
    ) {
        // Noise laced with the boundary, so that delimiters show up.
        let mut body = Vec::new();
        for (i, piece) in noise.iter().enumerate() {
            if i % 3 == 0 {
                body.extend_from_slice(format!("\r\n--{boundary}").as_bytes());
            }
            body.extend_from_slice(piece);
        }
        let files = scan(&format!("multipart/form-data; boundary={boundary}"), &body, &sizes).unwrap();
        prop_assert!(files.len() <= 100);
    }

    #[test]
    fn multipart_content_types_never_panic(content_type in any::<String>()) {
        let _ = MultipartScanner::for_content_type(&content_type);
    }
}

// ---------------------------------------------------------------------------
// Body copies, decoding, the exchange document and derive

fn shipped_rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let docs: Vec<Document> = taphook::demo::PROFILES
            .iter()
            .map(|(name, text)| Document::parse(name.as_ref(), text, &|_| None).unwrap())
            .collect();
        load_documents(&docs).unwrap()
    })
}

fn header() -> impl Strategy<Value = (String, Bytes)> {
    (
        prop_oneof![
            Just("content-type".to_string()),
            Just("content-encoding".to_string()),
            Just("cookie".to_string()),
            Just("authorization".to_string()),
            Just("idempotency-key".to_string()),
            Just("x-api-key".to_string()),
            "[a-z-]{1,10}",
        ],
        prop_oneof![
            Just(b"application/json".to_vec()),
            Just(b"application/x-www-form-urlencoded".to_vec()),
            Just(b"gzip".to_vec()),
            Just(b"gzip, br, deflate".to_vec()),
            Just(b"Bearer a.b.c".to_vec()),
            vec(any::<u8>(), 0..24),
        ],
    )
        .prop_map(|(k, v)| (k, Bytes::from(v)))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        Just(br#"{"id": 53511, "status": "initialized", "template_key": "contacts"}"#.to_vec()),
        Just(b"a=1&b=%ff&c".to_vec()),
        "[\\[{\"a:1,}\\] ]{0,200}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #[test]
    fn copies_respect_their_cap_and_budget_and_give_it_back(
        parts in vec(vec(any::<u8>(), 0..100), 0..20),
        cap in 0usize..600,
        limit in 0usize..800,
    ) {
        let budget = Budget::new(limit);
        let mut a = Captured::with_budget(cap, budget.clone());
        let mut b = Captured::with_budget(cap, budget.clone());
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 0 { a.push(part) } else { b.push(part) }
            prop_assert!(a.bytes.len() <= cap && b.bytes.len() <= cap);
            prop_assert!(budget.used() <= limit);
            prop_assert_eq!(budget.used(), a.bytes.len() + b.bytes.len());
        }
        let whole: Vec<u8> = parts.iter().step_by(2).flatten().copied().collect();
        if !a.truncated {
            prop_assert_eq!(&a.bytes, &whole);
        } else {
            prop_assert!(a.bytes.is_empty(), "a cut copy holds nothing");
        }
        drop(a);
        drop(b);
        prop_assert_eq!(budget.used(), 0);
    }

    #[test]
    fn decoding_gives_the_body_or_nothing_within_the_cap(
        data in vec(any::<u8>(), 0..2000),
        cap in 0usize..3000,
        layers in 1usize..7,
    ) {
        use std::io::Write;
        let mut packed = data.clone();
        for _ in 0..layers {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&packed).unwrap();
            packed = gz.finish().unwrap();
        }
        let encoding = vec!["gzip"; layers].join(", ");
        // With room to spare, every layer is undone, up to MAX_CODINGS.
        let roomy = decode(Some(&encoding), &packed, 1 << 20);
        prop_assert_eq!(roomy.is_some(), layers <= MAX_CODINGS);
        if let Some(d) = roomy {
            prop_assert_eq!(&d, &data);
        }
        // Under a cap: the body whole, or nothing.
        match decode(Some(&encoding), &packed, cap) {
            Some(d) => prop_assert!(d == data && d.len() <= cap),
            None => prop_assert!(layers > MAX_CODINGS || packed.len().max(data.len()) + 64 * layers > cap),
        }
        // Garbage decodes to nothing, within the cap too.
        if let Some(d) = decode(Some("gzip, br, deflate"), &data, cap) {
            prop_assert!(d.len() <= cap);
        }
    }

    #[test]
    fn the_exchange_document_and_derive_never_panic(
        method in prop_oneof![
            Just("POST".to_string()),
            Just("GET".to_string()),
            Just("DELETE".to_string()),
            "[A-Z]{1,7}",
        ],
        path in prop_oneof![
            Just("/v1/embeds".to_string()),
            Just("/v1/embeds/53511/upload".to_string()),
            Just("/v1/embeds/%00/map".to_string()),
            Just("/api/v1/headless/imports/".to_string()),
            "/[a-z0-9%./]{0,30}",
        ],
        query in proptest::option::of("[a-z=&%0-9]{0,20}"),
        request_headers in vec(header(), 0..6),
        response_headers in vec(header(), 0..6),
        request_body in body(),
        response_body in body(),
        status in prop_oneof![Just(200u16), Just(201), Just(404), 100u16..600],
        cap in 0usize..400,
    ) {
        let copy = |bytes: &[u8]| {
            let mut c = Captured::new(cap);
            for chunk in bytes.chunks(7) {
                c.push(chunk);
            }
            c
        };
        // What a proxied exchange carries: the header map Pingora parsed
        // (bytes a header value cannot hold never get that far).
        let map = |headers: Vec<(String, Bytes)>| {
            headers
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_maybe_shared(v).ok()?,
                    ))
                })
                .collect::<http::HeaderMap>()
        };
        let exchange = Exchange {
            request_id: "prop".into(),
            method,
            path,
            query,
            request_headers: map(request_headers),
            request_body: Some(copy(&request_body)),
            files: Vec::new(),
            status,
            response_headers: map(response_headers),
            response_body: Some(copy(&response_body)),
            completed_at: SystemTime::now(),
            trace: None,
        };
        let doc = exchange.document("Production");
        for side in ["request", "response"] {
            let truncated = doc[side]["truncated"].as_bool().unwrap();
            if truncated {
                prop_assert_eq!(&doc[side]["body"], &Value::Null);
            }
        }
        let sessions = MemorySessions::new(1 << 20, Duration::from_secs(60));
        let deriver = Deriver::offline("Production");
        for event in deriver.derive(&exchange, shipped_rules(), &sessions) {
            serde_json::to_string(&event.event).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Route matching

fn route(i: usize, template: &str, params: Vec<String>, method: Option<&str>) -> Route {
    Route {
        name: format!("r{i}"),
        event: "e".into(),
        methods: method.map(|m| vec![m.to_string()]).unwrap_or_default(),
        path: template.to_string(),
        params,
        status: StatusMatch(vec![StatusRule::Class(2)]),
        when: None,
        session: None,
        session_alias: None,
        remember: Vec::new(),
        trigger: None,
        dedup_key: None,
        data: Template::empty(),
        capture_max: (i % 2 == 1).then_some(i * 100),
        origin: Origin {
            file: PathBuf::from("properties.yaml"),
            line: i + 1,
        },
        needs: taphook::derive::exchange::Needs::ALL,
    }
}

fn segment(templates: bool) -> BoxedStrategy<String> {
    let fixed = prop_oneof![
        Just("v1".to_string()),
        Just("embeds".to_string()),
        Just(String::new()),
        Just("%00".to_string()),
        Just("..".to_string()),
        Just("x".to_string()),
        "[a-z0-9:*{}%.]{1,4}",
    ];
    if templates {
        prop_oneof![
            3 => fixed,
            1 => Just("{id}".to_string()),
            1 => Just("{name}".to_string()),
            1 => Just("{*rest}".to_string()),
        ]
        .boxed()
    } else {
        fixed.boxed()
    }
}

fn path(templates: bool) -> impl Strategy<Value = String> {
    vec(segment(templates), 0..5).prop_map(|s| format!("/{}", s.join("/")))
}

proptest! {
    #[test]
    fn route_matching_never_panics_and_the_proxy_agrees_with_derive(
        templates in vec((path(true), proptest::option::of(prop_oneof![Just("GET"), Just("POST")])), 1..8),
        paths in vec(path(false), 0..8),
        methods in vec(prop_oneof![Just("GET"), Just("POST"), Just("PUT")], 8),
    ) {
        let routes: Vec<Route> = templates
            .iter()
            .filter_map(|(t, m)| parse_template(t).ok().map(|(_, params)| (t, params, *m)))
            .enumerate()
            .map(|(i, (t, params, m))| route(i, t, params, m))
            .collect();
        let Ok(table) = RouteTable::build(routes) else {
            return Ok(());
        };
        for (path, method) in paths.iter().zip(methods.iter().cycle()) {
            let found = table.lookup(method, path);
            let plan = table.tap_plan(method, path);
            prop_assert_eq!(plan.is_some(), !found.is_empty(), "{} {}", method, path);
            if let (Some(plan), Some(first)) = (plan, found.first()) {
                prop_assert_eq!(plan.route, first.route.name.as_str());
                prop_assert_eq!(plan.template, first.route.path.as_str());
                prop_assert_eq!(plan.cap, found.iter().map(|m| m.route.capture_max).max().flatten());
            }
            for m in &found {
                prop_assert_eq!(m.params.len(), m.route.params.len());
            }
        }
    }

    #[test]
    fn templates_never_panic(template in any::<String>()) {
        let _ = parse_template(&template);
    }
}

// ---------------------------------------------------------------------------
// JWT claims

fn encode(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

proptest! {
    #[test]
    fn jwt_claims_never_panic(token in any::<String>(), dotted in "[A-Za-z0-9_=%.-]{0,60}") {
        for t in [token.as_str(), dotted.as_str()] {
            if let Some(claims) = jwt::claims(t, None) {
                prop_assert!(claims.is_object());
            }
            let _ = jwt::claims(t, Some(b"k"));
            let _ = jwt::bearer(t);
        }
    }

    #[test]
    fn jwt_claims_round_trip_and_verify(
        fields in proptest::collection::btree_map("[a-z_]{1,8}", prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ], 0..6),
        secret in vec(any::<u8>(), 1..32),
    ) {
        let claims = Value::Object(fields.into_iter().collect::<Map<String, Value>>());
        let token = encode(&claims, &secret);
        prop_assert_eq!(jwt::claims(&token, None), Some(claims.clone()));
        prop_assert_eq!(jwt::claims(&token, Some(&secret)), Some(claims.clone()));
        let mut other = secret.clone();
        other[0] ^= 1;
        prop_assert_eq!(jwt::claims(&token, Some(&other)), None);
        let authorization = format!("Bearer {token}");
        prop_assert_eq!(jwt::bearer(&authorization), Some(token.as_str()));
    }
}

// ---------------------------------------------------------------------------
// The pipeline's lane key

/// Routes on one path whose `session` reads the exchange in each way a
/// key can be written: a plain `var` of the body, of a path parameter, of
/// an array item (read straight from the exchange), and a computed one
/// (evaluated).
fn key_rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let text = r#"routes:
  - name: by-body
    event: embed_initialized
    method: POST
    path: /k/{id}
    session: $response.body.id
  - name: by-param
    event: file_uploaded
    method: POST
    path: /k/{id}
    session: $params.id
  - name: by-item
    event: import_submitted
    method: POST
    path: /k/{id}
    session: $response.body.items.0.key
  - name: computed
    event: import_succeeded
    method: POST
    path: /k/{id}
    session: {"cat": ["s-", "$response.body.id"]}
"#;
        let doc = Document::parse("keys.yaml".as_ref(), text, &|_| None).unwrap();
        load_documents(&[doc]).unwrap()
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "[a-z0-9.~-]{0,6}".prop_map(Value::from),
        "[a-z]{1,3}".prop_map(|k| serde_json::json!({ k: 1 })),
    ]
}

proptest! {
    /// The key the pipeline picks a lane by (`Prepared::route_keys`, read
    /// straight from the exchange where it can) is the session each route
    /// gives its event when the lane derives it.
    #[test]
    fn the_lane_key_is_the_session_the_events_get(
        id in "[a-z0-9]{1,8}",
        body_id in json_leaf(),
        item_key in json_leaf(),
        items in any::<bool>(),
    ) {
        let body = if items {
            serde_json::json!({"id": body_id, "items": [{"key": item_key}]})
        } else {
            serde_json::json!({"id": body_id})
        };
        let mut captured = Captured::new(1 << 16);
        captured.push(body.to_string().as_bytes());
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", http::HeaderValue::from_static("application/json"));
        let exchange = Exchange {
            request_id: "lane".into(),
            method: "POST".into(),
            path: format!("/k/{id}"),
            query: None,
            request_headers: http::HeaderMap::new(),
            request_body: None,
            files: Vec::new(),
            status: 200,
            response_headers: headers,
            response_body: Some(captured),
            completed_at: SystemTime::now(),
            trace: None,
        };
        let deriver = Deriver::offline("Production");
        let prepared = deriver.prepare(&exchange, key_rules()).unwrap();
        let lane_keys = prepared.route_keys();
        let sessions = MemorySessions::new(1 << 20, Duration::from_secs(60));
        let derived: Vec<String> = deriver
            .derive_prepared(&prepared, &exchange, &sessions)
            .iter()
            .filter_map(|e| taphook::store::session_key(&e.event.embed_id))
            .collect();
        prop_assert_eq!(lane_keys, derived);
    }
}
