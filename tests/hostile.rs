//! Hostile traffic: crafted requests sent through taphook and straight to
//! the upstream (the reference importer) must get the same answer
//! (status, headers but the hop-by-hop ones and `date`, body bytes), or
//! the difference documented in docs/SECURITY.md ("Hostile traffic") and
//! pinned here; taphook never panics, keeps serving and tapping, and the
//! tap's copies stay within their caps, budget and deadline.
//!
//! Requests go over raw TCP sockets, so that nothing normalises them on
//! the way. `tests/proxy_fidelity.rs` has the everyday cases and a first
//! few hostile ones; these are the rest.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// Taps every fixture (and the importer's upload route) and delivers
/// what the tap saw, keyed by the request's `x-case` header.
fn hostile_rules() -> Vec<(&'static str, String)> {
    vec![(
        "hostile.yaml",
        r#"
routes:
  - name: fixture
    event: fixture_seen
    method: "*"
    path: /_fixtures/{name}
    status: [2xx, 4xx, 5xx]
    data:
      case: $request.headers.x-case
      path: $path
      status: $response.status
      request_truncated: $request.truncated
      response_truncated: $response.truncated
      request_body: $request.body
      response_body: $response.body
      files: $request.files
      jwt: $jwt
  - name: hostile-upload
    event: fixture_seen
    method: POST
    path: /v1/embeds/{id}/upload
    status: [2xx, 4xx]
    data:
      case: $request.headers.x-case
      files: $request.files
webhooks:
  - key: fixtures
    url: "{receiver}/hooks/fixtures"
    events: [fixture_seen]
"#
        .to_string(),
    )]
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client: requests are written byte for byte; responses are
// read by their own framing, their bodies checksummed as they stream.

/// Response headers left out of comparisons: `date` (the second it was
/// sent) and the hop-by-hop ones (RFC 9110 7.6.1).
const NOT_COMPARED: &[&str] = &[
    "date",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Bodies longer than this are compared by length and CRC-32 only.
const KEEP: usize = 4 << 20;

#[derive(Clone, PartialEq, Eq)]
struct Answer {
    /// 0 when the connection ended without a response.
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    len: u64,
    crc: u32,
}

/// Bodies shown by their start, length and CRC only.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    String::from_utf8_lossy(&v[..v.len().min(80)]).into_owned(),
                )
            })
            .collect();
        write!(f, "{} crc {:08x} {headers:?}", self.summary(), self.crc)
    }
}

impl Answer {
    fn none() -> Self {
        Answer {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            len: 0,
            crc: 0,
        }
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn summary(&self) -> String {
        format!(
            "{} ({} headers, {} body bytes: {:?})",
            self.status,
            self.headers.len(),
            self.len,
            String::from_utf8_lossy(&self.body[..self.body.len().min(120)])
        )
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more; false at the end of the stream (or on an error: a
    /// reset after the response is the end of it too).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Passes `n` bytes (all until the end when `None`) to `sink`.
    fn body(&mut self, n: Option<u64>, sink: &mut Sink) {
        let mut left = n.unwrap_or(u64::MAX);
        while left > 0 {
            if self.buf.is_empty() && !self.fill() {
                return;
            }
            let take = (self.buf.len() as u64).min(left) as usize;
            sink.push(&self.buf[..take]);
            self.buf.drain(..take);
            left -= take as u64;
        }
    }
}

struct Sink {
    body: Vec<u8>,
    len: u64,
    crc: flate2::Crc,
}

impl Sink {
    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.crc.update(bytes);
        let room = KEEP.saturating_sub(self.body.len());
        self.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Reads one response (skipping `100 Continue`s).
fn read_answer(conn: &mut Conn, head_request: bool) -> Answer {
    let (status, mut headers) = loop {
        let head_end = loop {
            if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if conn.buf.len() > 8 << 20 || !conn.fill() {
                return Answer::none();
            }
        };
        let mut storage = vec![httparse::EMPTY_HEADER; 4096];
        let mut resp = httparse::Response::new(&mut storage);
        if !matches!(
            resp.parse(&conn.buf[..head_end]),
            Ok(httparse::Status::Complete(_))
        ) {
            return Answer::none();
        }
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        conn.buf.drain(..head_end);
        if status != 100 {
            break (status, headers);
        }
    };
    let mut sink = Sink {
        body: Vec::new(),
        len: 0,
        crc: flate2::Crc::new(),
    };
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    if head_request || status == 204 || status == 304 {
    } else if value("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        while let Some(line) = conn.line() {
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let Ok(n) = u64::from_str_radix(size, 16) else {
                break;
            };
            if n == 0 {
                // Trailers, then the blank line.
                while conn.line().is_some_and(|l| !l.is_empty()) {}
                break;
            }
            conn.body(Some(n), &mut sink);
            conn.line();
        }
    } else if let Some(n) = value("content-length").and_then(|v| v.trim().parse().ok()) {
        conn.body(Some(n), &mut sink);
    } else {
        conn.body(None, &mut sink);
    }
    headers.retain(|(k, _)| !NOT_COMPARED.contains(&k.as_str()));
    headers.sort();
    Answer {
        status,
        headers,
        body: sink.body,
        len: sink.len,
        crc: sink.crc.sum(),
    }
}

/// Sends a request with `send` (write errors are ignored: a server may
/// answer and close before the body is through) and reads the answer.
fn raw_with(addr: SocketAddr, send: impl FnOnce(&mut TcpStream), head_request: bool) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    send(&mut stream);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    read_answer(&mut conn, head_request)
}

fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let head = request.starts_with(b"HEAD ");
    raw_with(
        addr,
        |s| {
            let _ = s.write_all(request);
        },
        head,
    )
}

/// `raw` on a blocking thread (the importer runs on this test's runtime).
async fn raw_async(addr: SocketAddr, request: Vec<u8>) -> Answer {
    tokio::task::spawn_blocking(move || raw(addr, &request))
        .await
        .unwrap()
}

/// A request: `Host`, `Content-Length` (unless a header sets framing)
/// and `Connection: close` added.
fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: importer.test\r\nConnection: close\r\n");
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (!body.is_empty() || method == "POST" || method == "PUT") {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

fn importer_addr(stack: &Stack) -> SocketAddr {
    stack.importer.as_ref().unwrap().addr
}

/// taphook's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// The events the tap derived for `/hooks/fixtures`, once every exchange
/// sent so far has been derived and delivered: a last request marks the
/// end (the pipeline derives in order), then deliveries catch up.
async fn fixture_events(stack: &Stack) -> Vec<Value> {
    let sentinel = format!("sentinel-{}", fastrand::u64(..));
    let r = raw_async(
        stack.proxy,
        request(
            "POST",
            b"/_fixtures/echo",
            &[
                ("content-type", b"application/json"),
                ("x-case", sentinel.as_bytes()),
            ],
            b"{}",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "taphook still serves a normal request");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events: Vec<Value> = stack
            .receiver
            .received_on("/hooks/fixtures")
            .iter()
            .map(|r| r.json()["data"].clone())
            .collect();
        let derived = stack
            .metric("taphook_events_derived_total{event_type=\"fixture_seen\"}")
            .await;
        if events.iter().any(|e| e["case"] == sentinel.as_str()) && events.len() as f64 >= derived {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "events did not arrive ({} of {derived}):\n{}",
            events.len(),
            stack.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event<'a>(events: &'a [Value], case: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["case"] == case)
        .unwrap_or_else(|| panic!("no event for case {case}"))
}

/// Whatever came before, taphook is alive, never panicked, serves and
/// taps, and its copies hold nothing once the exchanges are done.
async fn still_healthy(stack: &mut Stack) {
    assert!(stack.alive(), "taphook exited:\n{}", stack.log());
    let log = stack.log();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(stack.admin_status("/healthz").await, 200);
    assert_eq!(
        stack.wait_metric("taphook_capture_bytes", 0.0).await,
        0.0,
        "the copies gave their bytes back"
    );
}

// ---------------------------------------------------------------------------
// The corpus.

/// What taphook must do with a case.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exactly what the upstream answers directly.
    Same,
    /// Both refuse the request with the same status, each with its own
    /// error response: taphook's is Pingora's (`server: Pingora`,
    /// `cache-control: private, no-store`, no body). Documented.
    OwnError,
    /// Pingora's parser or limits differ from the importer's (hyper's):
    /// the statuses each answers. Documented.
    Differs { direct: u16, proxied: u16 },
    /// Headers the request's `Connection` header names are removed on
    /// the way (RFC 9110 7.6.1): same status and body, but the echo
    /// fixture reflects the missing `content-type`.
    Stripped,
}

struct Case {
    name: String,
    request: Vec<u8>,
    expect: Expect,
}

fn case(name: &str, request: Vec<u8>) -> Case {
    Case {
        name: name.to_string(),
        request,
        expect: Expect::Same,
    }
}

/// A tapped request to a fixture, labelled with its case.
fn tapped(name: &str, method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Case {
    let mut all = headers.to_vec();
    all.push(("x-case", name.as_bytes()));
    case(name, request(method, target, &all, body))
}

fn echo(name: &str, content_type: &[u8], body: &[u8]) -> Case {
    tapped(
        name,
        "POST",
        b"/_fixtures/echo",
        &[("content-type", content_type)],
        body,
    )
}

fn jwt(claims: &str) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

fn with_jwt(name: &str, authorization: &[u8]) -> Case {
    tapped(
        name,
        "POST",
        b"/_fixtures/echo",
        &[
            ("content-type", b"application/json"),
            ("authorization", authorization),
        ],
        b"{}",
    )
}

fn multipart(name: &str, target: &[u8], content_type: &[u8], body: &[u8]) -> Case {
    tapped(
        name,
        "POST",
        target,
        &[("content-type", content_type)],
        body,
    )
}

fn deep_json(depth: usize) -> Vec<u8> {
    let mut v = b"{\"a\":".repeat(depth);
    v.extend_from_slice(b"1");
    v.extend_from_slice(&b"}".repeat(depth));
    v
}

fn corpus(embed: u64) -> Vec<Case> {
    let json: &[u8] = b"application/json";
    let upload = format!("/v1/embeds/{embed}/upload").into_bytes();
    let mut cases = vec![
        // Invalid JSON, to a fixture that echoes it and to the importer,
        // which parses it.
        echo("json-truncated", json, b"{\"a\": [1, 2"),
        echo("json-nul", json, b"{\"a\": \"\x00\"}\x00"),
        echo("json-nan", json, b"{\"a\": NaN, \"b\": 1e999999}"),
        echo("json-lone-surrogate", json, b"{\"a\": \"\\ud800\"}"),
        echo("json-bom", json, b"\xef\xbb\xbf{\"a\": 1}"),
        echo("json-trailing", json, b"{\"a\": 1} {\"b\": 2}"),
        echo("json-duplicate-keys", json, b"{\"a\": 1, \"a\": 2}"),
        tapped(
            "json-invalid-importer",
            "POST",
            b"/v1/embeds",
            &[("content-type", json)],
            b"{\"template_key\": ",
        ),
        // Nested 100,000 deep: request and (echoed) response bodies, and
        // through the importer's own parser.
        echo("json-deep-objects", json, &deep_json(100_000)),
        tapped(
            "json-deep-importer",
            "POST",
            b"/v1/embeds",
            &[("content-type", json)],
            &deep_json(100_000),
        ),
        // Not UTF-8: header values, cookies, query, body, a response header.
        tapped(
            "utf8-header-values",
            "POST",
            b"/_fixtures/echo",
            &[
                ("content-type", b"application/json; charset=\xff"),
                ("x-latin1", b"caf\xe9"),
                ("cookie", b"sessionid=\xc3\x28; other=\xff"),
                ("idempotency-key", b"\xfe\xff"),
            ],
            b"{\"name\": \"\xff\"}",
        ),
        tapped("utf8-query", "GET", b"/_fixtures/headers?n=1&x=%ff%fe&y=\xff", &[], b""),
        tapped("utf8-path", "GET", b"/_fixtures/caf\xc3\xa9\xff", &[], b""),
        echo("utf8-form", b"application/x-www-form-urlencoded", b"a=%ff&b=\xfe"),
        tapped("utf8-response-header", "GET", b"/_fixtures/headers?n=1", &[], b""),
        // Many headers and long values, both ways.
        tapped("response-100-headers", "GET", b"/_fixtures/headers?n=100", &[], b""),
        tapped(
            "response-64k-header",
            "GET",
            b"/_fixtures/headers?n=1&size=65536",
            &[],
            b"",
        ),
        // %00 and ../ in paths: passed on as they are; the tap's params
        // carry them as text.
        tapped("path-nul-escaped", "GET", b"/_fixtures/%00", &[], b""),
        tapped("path-nul-in-name", "POST", b"/_fixtures/echo%00", &[], b"{}"),
        tapped("path-dotdot", "GET", b"/_fixtures/../v1/embeds/1", &[], b""),
        tapped("path-dotdot-escaped", "GET", b"/_fixtures/..%2f..%2fetc%2fpasswd", &[], b""),
        tapped("path-dot-segments", "POST", b"/_fixtures/./echo", &[], b"{}"),
        tapped("path-double-slash", "POST", b"//_fixtures//echo", &[], b"{}"),
        tapped("path-backslash", "GET", b"/_fixtures/..\\..\\windows", &[], b""),
        tapped("path-absolute-form", "POST", b"http://evil.test/_fixtures/echo", &[], b"{}"),
        tapped("path-absolute-form-host", "POST", b"http://importer.test/_fixtures/echo", &[], b"{}"),
        tapped(
            "connection-nominations",
            "POST",
            b"/_fixtures/echo",
            &[("connection", b"close, a, b, c, d, e, f, g, h, i, j, k")],
            b"{}",
        ),
        tapped(
            "connection-nominates-tapped-header",
            "POST",
            b"/_fixtures/echo",
            &[
                ("connection", b"close, authorization, content-type"),
                ("authorization", format!("Bearer {}", jwt(r#"{"user_id":"forged"}"#)).as_bytes()),
                ("content-type", b"application/json"),
            ],
            b"{}",
        ),
        tapped("path-long", "GET", &[b"/_fixtures/".as_slice(), &[b'a'; 60_000]].concat(), &[], b""),
        // Bad multipart boundaries, to the echo fixture and to the
        // importer's upload route, which parses the parts.
        multipart(
            "multipart-boundary-too-long",
            b"/_fixtures/echo",
            format!("multipart/form-data; boundary={}", "b".repeat(300)).as_bytes(),
            format!("--{}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\na\r\n--{}--\r\n", "b".repeat(300), "b".repeat(300)).as_bytes(),
        ),
        multipart(
            "multipart-boundary-mismatch",
            &upload,
            b"multipart/form-data; boundary=XyZ",
            b"--AbC\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\na,b\r\n--AbC--\r\n",
        ),
        multipart(
            "multipart-no-end",
            &upload,
            b"multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\na,b\r\n",
        ),
        multipart(
            "multipart-quoted-boundary",
            &upload,
            b"multipart/form-data; boundary=\"a b:c\"",
            b"--a b:c\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\nname\r\nAda\r\n--a b:c--\r\n",
        ),
        multipart(
            "multipart-prefix-boundary",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=a",
            b"--ab\r\nContent-Disposition: form-data; name=\"x\"; filename=\"no.csv\"\r\n\r\n\r\n--a\r\nContent-Disposition: form-data; name=\"file\"; filename=\"yes.csv\"\r\n\r\n--ab--\r\n--a--\r\n",
        ),
        multipart(
            "multipart-padding",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=XyZ",
            &[
                b"--XyZ".as_slice(),
                &[b' '; 10_000],
                b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\nx\r\n--XyZ--\r\n",
            ]
            .concat(),
        ),
        multipart(
            "multipart-huge-part-headers",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=XyZ",
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\nX-Pad: {}\r\n\r\nx\r\n--XyZ--\r\n",
                "p".repeat(40_000)
            )
            .as_bytes(),
        ),
        multipart(
            "multipart-many-part-headers",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=XyZ",
            format!(
                "--XyZ\r\n{}Content-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\nx\r\n--XyZ--\r\n",
                "X-A: 1\r\n".repeat(100)
            )
            .as_bytes(),
        ),
        multipart(
            "multipart-1000-files",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=XyZ",
            format!(
                "{}--XyZ--\r\n",
                (0..1000)
                    .map(|i| format!("--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"{i}.csv\"\r\n\r\nx\r\n"))
                    .collect::<String>()
            )
            .as_bytes(),
        ),
        multipart(
            "multipart-not-utf8-filename",
            &upload,
            b"multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"caf\xe9\xff.csv\"\r\n\r\nname\r\n--XyZ--\r\n",
        ),
        multipart(
            "multipart-long-filename",
            b"/_fixtures/echo",
            b"multipart/form-data; boundary=XyZ",
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}.csv\"\r\n\r\nx\r\n--XyZ--\r\n",
                "n".repeat(5000)
            )
            .as_bytes(),
        ),
        // Malformed and oversized JWTs in Authorization.
        with_jwt("jwt-empty", b"Bearer "),
        with_jwt("jwt-two-parts", b"Bearer abc.def"),
        with_jwt("jwt-four-parts", b"Bearer a.b.c.d"),
        with_jwt("jwt-dots", b"Bearer .."),
        with_jwt("jwt-bad-base64", b"Bearer e30.%%%%.c2ln"),
        with_jwt("jwt-not-json", format!("Bearer {}", jwt("not json")).as_bytes()),
        with_jwt("jwt-array", format!("Bearer {}", jwt("[1,2]")).as_bytes()),
        with_jwt(
            "jwt-deep",
            format!("Bearer {}", jwt(&String::from_utf8(deep_json(50_000)).unwrap())).as_bytes(),
        ),
        with_jwt("jwt-not-utf8", b"Bearer \xff\xfe.\xfd.\xfc"),
        with_jwt(
            "jwt-15k",
            format!("Bearer {}", jwt(&format!(r#"{{"user_id":"u1","pad":"{}"}}"#, "p".repeat(11_000)))).as_bytes(),
        ),
        with_jwt(
            "jwt-17k",
            format!("Bearer {}", jwt(&format!(r#"{{"user_id":"u1","pad":"{}"}}"#, "p".repeat(13_000)))).as_bytes(),
        ),
        with_jwt(
            "jwt-256k",
            format!("Bearer {}", jwt(&format!(r#"{{"user_id":"u1","pad":"{}"}}"#, "p".repeat(190_000)))).as_bytes(),
        ),
        // Request framing: bad chunk sizes, smuggling-shaped requests.
        tapped(
            "chunked-bad-size",
            "POST",
            b"/_fixtures/echo",
            &[("transfer-encoding", b"chunked"), ("content-type", json)],
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        tapped(
            "chunked-huge-size",
            "POST",
            b"/_fixtures/echo",
            &[("transfer-encoding", b"chunked"), ("content-type", json)],
            b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        ),
        tapped(
            "chunked-and-length",
            "POST",
            b"/_fixtures/echo",
            &[
                ("content-length", b"4"),
                ("transfer-encoding", b"chunked"),
                ("content-type", json),
            ],
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        tapped(
            "two-content-lengths",
            "POST",
            b"/_fixtures/echo",
            &[("content-length", b"2"), ("content-length", b"3"), ("content-type", json)],
            b"{}",
        ),
        tapped(
            "content-encoding-layers",
            "POST",
            b"/_fixtures/echo",
            &[
                ("content-type", json),
                ("content-encoding", b"gzip, gzip, gzip, gzip, gzip, gzip, gzip, gzip"),
            ],
            b"not gzip",
        ),
    ];
    // 1,000 request headers, and 200 (over the importer's limit of 100,
    // under Pingora's of 256).
    for n in [200, 1000] {
        let names: Vec<String> = (0..n).map(|i| format!("x-h-{i}")).collect();
        let headers: Vec<(&str, &[u8])> = names
            .iter()
            .map(|k| (k.as_str(), b"v".as_slice()))
            .collect();
        cases.push(tapped(
            &format!("request-{n}-headers"),
            "GET",
            b"/_fixtures/headers",
            &headers,
            b"",
        ));
    }
    // Huge header values: the importer takes up to about 400 KiB of
    // header, Pingora up to 1 MiB.
    for kib in [8, 64, 256, 2048] {
        let value = vec![b'v'; kib << 10];
        cases.push(tapped(
            &format!("request-{kib}k-header"),
            "GET",
            b"/_fixtures/headers",
            &[("x-big", &value)],
            b"",
        ));
    }
    // Requests no client library would write.
    cases.extend([
        case("header-no-colon", b"GET /_fixtures/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nno colon here\r\n\r\n".to_vec()),
        case("header-name-not-token", b"GET /_fixtures/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx\xffname: v\r\n\r\n".to_vec()),
        case("header-obs-fold", b"GET /_fixtures/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: one\r\n two\r\n\r\n".to_vec()),
        case("header-nul-value", b"GET /_fixtures/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: a\x00b\r\n\r\n".to_vec()),
        case("request-line-garbage", b"\xff\xfe\xfd\r\n\r\n".to_vec()),
        case("method-lowercase", b"get /_fixtures/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        case("http-1.0", b"GET /_fixtures/headers HTTP/1.0\r\n\r\n".to_vec()),
        case("http-2.0-line", b"GET /_fixtures/headers HTTP/2.0\r\nHost: x\r\n\r\n".to_vec()),
        case("no-host", b"GET /_fixtures/headers HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        case("bare-lf", b"GET /_fixtures/headers HTTP/1.1\nHost: x\nConnection: close\n\n".to_vec()),
        case("path-raw-nul", b"GET /_fixtures/a\x00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        case("path-space", b"GET /_fixtures/a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
    ]);
    cases
}

/// Where Pingora's HTTP parser and limits differ from the importer's
/// (hyper's), taphook answers by itself: the differences documented in
/// docs/SECURITY.md ("Hostile traffic").
fn documented(cases: &mut [Case]) {
    let differences = [
        // Both refuse; each with its own error response.
        ("utf8-query", Expect::OwnError),
        ("utf8-path", Expect::OwnError),
        ("chunked-bad-size", Expect::OwnError),
        ("chunked-huge-size", Expect::OwnError),
        ("two-content-lengths", Expect::OwnError),
        ("header-no-colon", Expect::OwnError),
        ("header-name-not-token", Expect::OwnError),
        ("header-obs-fold", Expect::OwnError),
        ("header-nul-value", Expect::OwnError),
        ("request-line-garbage", Expect::OwnError),
        ("http-2.0-line", Expect::OwnError),
        // Pingora's limits: 256 headers, 1 MiB of header (the importer:
        // 100 headers, about 400 KiB, answered with 431).
        (
            "request-1000-headers",
            Expect::Differs {
                direct: 431,
                proxied: 400,
            },
        ),
        (
            "request-2048k-header",
            Expect::Differs {
                direct: 431,
                proxied: 400,
            },
        ),
        // Pingora refuses an absolute-form target whose authority is not
        // the Host, and more than 10 Connection nominations.
        (
            "path-absolute-form",
            Expect::Differs {
                direct: 200,
                proxied: 400,
            },
        ),
        (
            "connection-nominations",
            Expect::Differs {
                direct: 200,
                proxied: 400,
            },
        ),
        ("connection-nominates-tapped-header", Expect::Stripped),
        // Pingora takes a raw NUL or space in the target and forwards it
        // percent-encoded; the importer refuses the request line.
        (
            "path-raw-nul",
            Expect::Differs {
                direct: 400,
                proxied: 404,
            },
        ),
        (
            "path-space",
            Expect::Differs {
                direct: 400,
                proxied: 404,
            },
        ),
    ];
    for (name, expect) in differences {
        let c = cases
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name}"));
        c.expect = expect;
    }
}

/// Whether `proxied` is what `expect` allows, given `direct`.
fn as_expected(expect: Expect, direct: &Answer, proxied: &Answer) -> bool {
    match expect {
        Expect::Same => proxied == direct,
        Expect::OwnError => {
            proxied.status == direct.status
                && proxied.status >= 400
                && proxied.header("server") == Some(b"Pingora".as_slice())
        }
        Expect::Differs {
            direct: d,
            proxied: p,
        } => direct.status == d && proxied.status == p,
        Expect::Stripped => {
            proxied.status == direct.status
                && proxied.body == direct.body
                && proxied.header("content-type") == Some(b"application/octet-stream".as_slice())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_upstreams_answer() {
    let mut stack = Stack::with_rules(hostile_rules()).await;
    let embed: u64 = stack
        .client
        .post(stack.direct_url("/v1/embeds"))
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut cases = corpus(embed);
    documented(&mut cases);
    let report = std::env::var_os("HOSTILE_REPORT").is_some();
    let mut failures = Vec::new();
    for c in &cases {
        let direct = raw_async(importer_addr(&stack), c.request.clone()).await;
        let proxied = raw_async(stack.proxy, c.request.clone()).await;
        let ok = as_expected(c.expect, &direct, &proxied);
        if report {
            eprintln!(
                "{:32} {} direct {}\n{:32}   proxied {}",
                c.name,
                if proxied == direct { "same" } else { "DIFF" },
                direct.summary(),
                "",
                proxied.summary()
            );
            if proxied.status == direct.status && proxied != direct {
                eprintln!(
                    "    direct headers  {:?}\n    proxied headers {:?}",
                    direct.headers, proxied.headers
                );
            }
        }
        if !ok {
            failures.push(format!(
                "{} ({:?}):\n  direct  {}\n  proxied {}",
                c.name,
                c.expect,
                direct.summary(),
                proxied.summary()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let events = fixture_events(&stack).await;
    let files = &event(&events, "multipart-1000-files")["files"];
    assert_eq!(
        files.as_array().unwrap().len(),
        100,
        "at most 100 parts recorded"
    );
    assert_eq!(
        event(&events, "multipart-long-filename")["files"][0]["filename"]
            .as_str()
            .unwrap()
            .len(),
        1024
    );
    assert_eq!(
        event(&events, "multipart-quoted-boundary")["files"],
        json!([{"field": "file", "filename": "a.csv", "content_type": "text/csv"}])
    );
    assert_eq!(
        event(&events, "multipart-prefix-boundary")["files"],
        json!([{"field": "file", "filename": "yes.csv", "content_type": null}])
    );
    assert_eq!(
        event(&events, "multipart-boundary-too-long")["files"],
        json!([])
    );
    assert_eq!(event(&events, "jwt-15k")["jwt"]["user_id"], "u1");
    for name in [
        "jwt-empty",
        "jwt-two-parts",
        "jwt-four-parts",
        "jwt-bad-base64",
        "jwt-not-json",
        "jwt-array",
        "jwt-deep",
        "jwt-17k",
    ] {
        assert_eq!(event(&events, name)["jwt"], json!({}), "{name}");
    }
    // The tap reads the headers the upstream got: not an Authorization
    // the Connection header had removed on the way.
    assert_eq!(
        event(&events, "connection-nominates-tapped-header")["jwt"],
        json!({})
    );
    let deep = event(&events, "json-deep-objects");
    assert_eq!(
        (&deep["request_body"], &deep["response_body"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(event(&events, "path-nul-escaped")["path"], "/_fixtures/%00");
    still_healthy(&mut stack).await;
}

// ---------------------------------------------------------------------------
// Large bodies and gzip bombs: the tap's copies stay within their caps.

/// Bytes of the large bodies, both ways.
const LARGE: u64 = 200 << 20;

/// A large request body, streamed from a 64 KiB block; never held whole.
fn send_large(stream: &mut TcpStream, target: &str) -> u32 {
    let block: Vec<u8> = (0..64 << 10).map(|i| b"0123456789,"[i % 11]).collect();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: importer.test\r\nConnection: close\r\nContent-Type: application/json\r\nx-case: large-request\r\nContent-Length: {LARGE}\r\n\r\n"
    );
    let mut crc = flate2::Crc::new();
    let _ = stream.write_all(head.as_bytes());
    let mut left = LARGE as usize;
    while left > 0 {
        let n = left.min(block.len());
        crc.update(&block[..n]);
        if stream.write_all(&block[..n]).is_err() {
            break;
        }
        left -= n;
    }
    crc.sum()
}

async fn large_request(addr: SocketAddr) -> (Answer, u32) {
    tokio::task::spawn_blocking(move || {
        let mut crc = 0;
        let answer = raw_with(addr, |s| crc = send_large(s, "/_fixtures/count"), false);
        (answer, crc)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_gzip_bombs_stay_within_the_capture_caps() {
    let mut stack = Stack::with_rules(hostile_rules()).await;
    let baseline = peak_rss(stack.pid());

    // 200 MB up: the importer counts it as it streams.
    let (direct, crc) = large_request(importer_addr(&stack)).await;
    let (proxied, _) = large_request(stack.proxy).await;
    assert_eq!(direct.json(), json!({"bytes": LARGE, "crc32": crc}));
    assert_eq!(proxied, direct);

    // 200 MB down.
    let target = format!("/_fixtures/stream?bytes={LARGE}");
    let get = request(
        "GET",
        target.as_bytes(),
        &[("x-case", b"large-response")],
        b"",
    );
    let direct = raw_async(importer_addr(&stack), get.clone()).await;
    let proxied = raw_async(stack.proxy, get).await;
    assert_eq!(direct.len, LARGE);
    assert_eq!(proxied, direct);

    // Gzip bombs in tapped responses: one layer (under 1 MiB, about
    // 1 GiB of zeros) and two (tens of KiB, 4 GiB).
    for layers in [1, 2] {
        let target = format!("/_fixtures/gzip-bomb?layers={layers}");
        let name = format!("gzip-bomb-{layers}");
        let get = request(
            "GET",
            target.as_bytes(),
            &[("accept-encoding", b"gzip"), ("x-case", name.as_bytes())],
            b"",
        );
        let direct = raw_async(importer_addr(&stack), get.clone()).await;
        let proxied = raw_async(stack.proxy, get).await;
        assert_eq!(direct.status, 200);
        assert!(direct.len < 1 << 20, "the bomb fits the capture cap");
        assert_eq!(proxied, direct, "{name}");
    }

    let events = fixture_events(&stack).await;
    assert_eq!(event(&events, "large-request")["request_truncated"], true);
    assert_eq!(event(&events, "large-response")["response_truncated"], true);
    for name in ["gzip-bomb-1", "gzip-bomb-2"] {
        let e = event(&events, name);
        // Copied whole (under the cap), but it decodes past the cap.
        assert_eq!(e["response_truncated"], true, "{name}");
        assert_eq!(e["response_body"], Value::Null, "{name}");
    }
    let peak = peak_rss(stack.pid());
    eprintln!(
        "taphook peak RSS: {} MiB at start, {} MiB after",
        baseline >> 20,
        peak >> 20
    );
    // 400 MB went through and 5 GiB were offered to the decoder: the tap
    // holds one cap (1 MiB) per body and decodes at most one cap.
    assert!(
        peak < baseline + (64 << 20),
        "peak RSS {peak} (baseline {baseline})"
    );
    still_healthy(&mut stack).await;
}

// ---------------------------------------------------------------------------
// Slowloris: a body trickled a byte at a time keeps its request, but not
// its copy past `capture.max_duration`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_let_go_of_the_capture_budget() {
    let mut stack = Stack::start(Setup {
        rules: hostile_rules(),
        config: "capture:\n  max_duration: 1s\n",
        ..Default::default()
    })
    .await;
    let body = br#"{"trickled": "one byte at a time"}"#.to_vec();
    let head = |case: &str| {
        format!(
            "POST /_fixtures/count HTTP/1.1\r\nHost: importer.test\r\nConnection: close\r\nContent-Type: application/json\r\nx-case: {case}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    let direct = raw_async(
        importer_addr(&stack),
        [head("direct").as_bytes(), &body].concat(),
    )
    .await;

    // Through taphook: the head and a few bytes, then a byte every 250 ms.
    let mut stream = TcpStream::connect(stack.proxy).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(head("trickled").as_bytes()).unwrap();
    stream.write_all(&body[..4]).unwrap();
    let started = Instant::now();
    let held = stack.wait_metric("taphook_capture_bytes", 4.0).await;
    assert_eq!(held, 4.0, "the copy holds what arrived");
    let mut sent = 4;
    while started.elapsed() < Duration::from_millis(1500) {
        stream.write_all(&body[sent..sent + 1]).unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Past the deadline, the next byte drops the copy; the request goes on.
    assert_eq!(stack.wait_metric("taphook_capture_bytes", 0.0).await, 0.0);
    while sent < body.len() {
        stream.write_all(&body[sent..sent + 1]).unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxied = tokio::task::spawn_blocking(move || {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        read_answer(&mut conn, false)
    })
    .await
    .unwrap();
    assert_eq!(
        proxied, direct,
        "the trickled request is answered as directly"
    );

    // A body that arrives in time is copied as before.
    let fast = raw_async(stack.proxy, [head("fast").as_bytes(), &body].concat()).await;
    assert_eq!(fast, direct);
    let events = fixture_events(&stack).await;
    assert_eq!(event(&events, "trickled")["request_truncated"], true);
    assert_eq!(event(&events, "trickled")["request_body"], Value::Null);
    assert_eq!(event(&events, "fast")["request_truncated"], false);
    assert_eq!(
        event(&events, "fast")["request_body"],
        json!({"trickled": "one byte at a time"})
    );
    still_healthy(&mut stack).await;
}
