//! The exchange builder and derive stage on arbitrary traffic: bodies
//! copied in arbitrary chunks under a cap and a shared budget, then the
//! exchange document built and every shipped profile's routes (plus a
//! route that reads everything) derived from it. Nothing panics; copies
//! never exceed the cap or the budget, and give the budget back; a
//! decoded body never exceeds the cap.
//!
//! Input: one byte choosing the cap, one seeding the chunking, then a
//! raw HTTP request and a raw HTTP response separated by a line
//! `~~response~~`.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taphook::derive::exchange::{decode, Budget, Captured, Exchange, Headers};
use taphook::derive::Deriver;
use taphook::rules::source::Document;
use taphook::rules::{load_documents, Rules};
use taphook::store::MemorySessions;

const EVERYTHING: &str = r#"
routes:
  - name: everything
    event: seen
    method: "*"
    path: /{*rest}
    status: [1xx, 2xx, 3xx, 4xx, 5xx]
    session: $request.headers.x-session
    remember:
      embed_jwt: $request.body.embed_user_jwt
      template_key: $query.t
    data:
      request: $request
      response: $response
      jwt: $jwt
      params: $params
      query: $query
      session: $session
    dedup_key: ["$request.headers.x-dedup", "$response.body.id"]
"#;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut docs: Vec<Document> = taphook::demo::PROFILES
            .iter()
            .map(|(name, text)| Document::parse(name.as_ref(), text, &|_| None).unwrap())
            .collect();
        docs.push(Document::parse("everything.yaml".as_ref(), EVERYTHING, &|_| None).unwrap());
        load_documents(&docs).expect("the fuzz rules load")
    })
}

fn sessions() -> &'static MemorySessions {
    static SESSIONS: OnceLock<MemorySessions> = OnceLock::new();
    SESSIONS.get_or_init(|| MemorySessions::new(1 << 20, Duration::from_secs(60)))
}

struct Head {
    first: Vec<String>,
    headers: Headers,
    body: Vec<u8>,
}

/// A raw request or response: httparse reads the head; what it cannot
/// read is all body.
fn head(raw: &[u8], request: bool) -> Head {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let parsed = if request {
        let mut r = httparse::Request::new(&mut storage);
        match r.parse(raw) {
            Ok(httparse::Status::Complete(n)) => Some((
                vec![
                    r.method.unwrap_or("GET").to_string(),
                    r.path.unwrap_or("/").to_string(),
                ],
                n,
                r.headers.to_vec(),
            )),
            _ => None,
        }
    } else {
        let mut r = httparse::Response::new(&mut storage);
        match r.parse(raw) {
            Ok(httparse::Status::Complete(n)) => Some((
                vec![r.code.unwrap_or(200).to_string()],
                n,
                r.headers.to_vec(),
            )),
            _ => None,
        }
    };
    match parsed {
        Some((first, n, headers)) => Head {
            first,
            headers: headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), Bytes::copy_from_slice(h.value)))
                .collect(),
            body: raw[n..].to_vec(),
        },
        None => Head {
            first: vec![
                if request { "POST".into() } else { "200".into() },
                "/".into(),
            ],
            headers: Vec::new(),
            body: raw.to_vec(),
        },
    }
}

fn copy(
    body: &[u8],
    cap: usize,
    budget: &std::sync::Arc<Budget>,
    rng: &mut fastrand::Rng,
) -> Captured {
    let mut c = Captured::with_budget(cap, budget.clone());
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.usize(1..=rest.len().min(64));
        c.push(&rest[..n]);
        rest = &rest[n..];
    }
    assert!(c.bytes.len() <= cap, "copied past the cap");
    assert!(
        body.starts_with(&c.bytes),
        "the copy is not the body's start"
    );
    if !c.truncated {
        assert_eq!(c.bytes, body, "an untruncated copy is the whole body");
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let [cap_sel, seed, rest @ ..] = data else {
        return;
    };
    let cap = [0, 1, 8, 64, 512, 4096, 65536, 1 << 20][usize::from(cap_sel & 7)];
    // Sometimes a budget smaller than the two copies.
    let budget = Budget::new(if cap_sel & 8 != 0 {
        cap / 2 + 3
    } else {
        usize::MAX / 2
    });
    let mut rng = fastrand::Rng::with_seed(u64::from(*seed));
    let sep = b"\n~~response~~\n";
    let (req_raw, resp_raw) = match rest.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&rest[..i], &rest[i + sep.len()..]),
        None => (rest, &b""[..]),
    };
    let req = head(req_raw, true);
    let resp = head(resp_raw, false);
    let request_body = copy(&req.body, cap, &budget, &mut rng);
    let response_body = copy(&resp.body, cap, &budget, &mut rng);
    assert_eq!(
        budget.used(),
        request_body.bytes.len() + response_body.bytes.len()
    );
    for (headers, c) in [
        (&req.headers, &request_body),
        (&resp.headers, &response_body),
    ] {
        let encoding = headers
            .iter()
            .find(|(k, _)| k == "content-encoding")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if let Some(decoded) = decode(encoding.as_deref(), &c.bytes, cap) {
            assert!(decoded.len() <= cap, "decoded past the cap");
        }
    }
    let (path, query) = match req.first[1].split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (req.first[1].clone(), None),
    };
    let exchange = Exchange {
        request_id: "fuzz".into(),
        method: req.first[0].clone(),
        path,
        query,
        request_headers: req.headers,
        request_body: Some(request_body),
        files: Vec::new(),
        status: resp.first[0].parse().unwrap_or(200),
        response_headers: resp.headers,
        response_body: Some(response_body),
        completed_at: SystemTime::now(),
    };
    let doc = exchange.document("Fuzz");
    assert!(doc["request"]["truncated"].is_boolean() && doc["response"]["truncated"].is_boolean());
    let deriver = Deriver {
        environment_name: "Fuzz".into(),
        jwt_hs256_secret: (seed & 1 == 1).then(|| b"fuzz-secret".to_vec()),
    };
    for event in deriver.derive(&exchange, rules(), sessions()) {
        let text = serde_json::to_string(&event.event).expect("events serialise");
        let _: Value = serde_json::from_str(&text).expect("and read back");
    }
    drop(exchange);
    assert_eq!(budget.used(), 0, "the copies gave their bytes back");
});
