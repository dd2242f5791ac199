//! TLS on both sides and HTTP/2 (issue 25), with real sockets and
//! certificates made here (rcgen): curl over TLS with HTTP/2 and
//! HTTP/1.1, the same events as plain HTTP/1.1; an HTTPS upstream with a
//! private CA (another taphook), verified, and refused with a wrong CA; a
//! certificate replaced on disk and picked up with a connection held open
//! across it; a bad new pair kept out; mTLS accepted and refused, and its
//! CA replaced on disk; h2c; HTTP/2 to an upstream that offers it.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{write_atomically, Pki};
use common::*;
use rcgen::KeyPair;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An RSA key (ring signs with RSA keys but does not make them).
fn rsa_key(dir: &Path) -> KeyPair {
    let path = dir.join("rsa.key");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    KeyPair::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const PING_RULES: &str = "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\n      ua: $request.headers.user-agent\nwebhooks:\n  - key: p\n    url: {receiver}/hooks/p\n    events: [ping]\n";

fn tls_config(pki: &Pki, extra: &str) -> String {
    format!(
        "tls:\n  cert: {}\n  key: {}\n{extra}",
        path_of(&pki.path("server.pem")),
        path_of(&pki.path("server.key"))
    )
}

async fn start(config: &str) -> Stack {
    Stack::start(Setup {
        rules: vec![("ping.yaml", PING_RULES.to_string())],
        config,
        ..Default::default()
    })
    .await
}

/// curl with these arguments; its stdout, or the failure.
fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--noproxy",
            "*",
        ])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The pings received so far, by `i`: (count, user agent).
fn pings(stack: &Stack) -> Vec<Value> {
    let mut got: Vec<Value> = stack
        .receiver
        .received_on("/hooks/p")
        .iter()
        .map(|r| r.json()["data"].clone())
        .collect();
    got.sort_by_key(|d| d["i"].as_str().unwrap_or_default().to_string());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_http2_and_http1_and_taps_the_same_events() {
    let pki = Pki::new("a");
    pki.leaf("server", &["localhost", "127.0.0.1"], None);
    let stack = start(&tls_config(&pki, "")).await;
    let base = format!("https://localhost:{}", stack.proxy.port());
    let resolve = format!("localhost:{}:127.0.0.1", stack.proxy.port());
    let ca = pki.ca_path();
    let fetch = |i: usize, version: &str| {
        let url = format!("{base}/_fixtures/empty?i={i}");
        let args = [
            version,
            "--cacert",
            ca.as_str(),
            "--resolve",
            resolve.as_str(),
            "-A",
            "taphook-test",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            url.as_str(),
        ];
        curl(&args)
    };
    assert_eq!(fetch(1, "--http2").unwrap(), "2 204");
    assert_eq!(fetch(2, "--http1.1").unwrap(), "1.1 204");
    // Plain HTTP to a TLS listener is not served.
    let plain = format!(
        "http://127.0.0.1:{}/_fixtures/empty?i=3",
        stack.proxy.port()
    );
    assert!(curl(&["-o", "/dev/null", plain.as_str()]).is_err());
    // Without the CA the client refuses the certificate: nothing is skipped.
    let url = format!("{base}/_fixtures/empty?i=4");
    let refused = curl(&["--resolve", resolve.as_str(), url.as_str()]).unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    // The same events over HTTP/2 as over HTTP/1.1: same route, same data,
    // the request's headers without pseudo-headers.
    stack
        .receiver
        .wait_for("/hooks/p", 2, Duration::from_secs(10))
        .await;
    let got = pings(&stack);
    assert_eq!(
        got,
        vec![
            json!({"i": "1", "ua": "taphook-test"}),
            json!({"i": "2", "ua": "taphook-test"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_certificate_serves_as_well() {
    let pki = Pki::new("rsa");
    let key = rsa_key(pki.dir.path());
    pki.leaf("server", &["localhost"], Some(key));
    let stack = start(&tls_config(&pki, "")).await;
    let url = format!(
        "https://localhost:{}/_fixtures/empty?i=1",
        stack.proxy.port()
    );
    let resolve = format!("localhost:{}:127.0.0.1", stack.proxy.port());
    let out = curl(&[
        "--cacert",
        &pki.ca_path(),
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(out.unwrap(), "204");
}

/// A client that trusts `ca` (and presents `identity`, when given).
fn connector(ca: &Path, identity: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    // Every connection a full handshake: a resumed session shows the
    // certificate of the session it resumes, not the one served now.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(stack: &Stack, connector: &tokio_rustls::TlsConnector) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(stack.proxy).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// One keep-alive HTTP/1.1 request on `stream`; the status.
async fn get(stream: &mut Tls, i: usize) -> u16 {
    let request = format!(
        "GET /_fixtures/empty?i={i} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: raw\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // A 204 has no body: the head ends the response.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "the connection closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn served_certificate(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Waits until the sample `taphook_tls_reloads_total{result="<result>"}`
/// reaches `expected`; fails, with taphook's log, when it has not by the
/// deadline (`wait_metric` returns what it last saw, and a reload that
/// never came would otherwise pass for one that did).
async fn reloads_reach(stack: &Stack, result: &str, expected: f64) {
    let sample = format!("taphook_tls_reloads_total{{result=\"{result}\"}}");
    let got = stack.wait_metric(&sample, expected).await;
    assert_eq!(got, expected, "{sample}; taphook's log:\n{}", stack.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_picked_up_without_dropping_a_connection() {
    let pki = Pki::new("renew");
    let first = pki.leaf("server", &["localhost"], None);
    let stack = start(&tls_config(&pki, "")).await;
    let trust = connector(&pki.path("ca.pem"), None);
    let mut held = connect(&stack, &trust).await.unwrap();
    assert_eq!(served_certificate(&held), first);
    assert_eq!(get(&mut held, 1).await, 204);
    // Renewed in place, as certbot or cert-manager do.
    let second = pki.leaf("server", &["localhost"], None);
    reloads_reach(&stack, "success", 1.0).await;
    // The connection opened before goes on; a new one gets the new pair.
    assert_eq!(get(&mut held, 2).await, 204);
    let fresh = connect(&stack, &trust).await.unwrap();
    assert_eq!(served_certificate(&fresh), second);
    // A key that does not go with the certificate: kept out, said why,
    // the current pair still served. (A reload that read the renewal
    // between its certificate and its key counted an error already.)
    let errors = stack
        .metric("taphook_tls_reloads_total{result=\"error\"}")
        .await;
    let mismatched = KeyPair::generate().unwrap();
    write_atomically(&pki.path("server.key"), &mismatched.serialize_pem());
    reloads_reach(&stack, "error", errors + 1.0).await;
    let after = connect(&stack, &trust).await.unwrap();
    assert_eq!(served_certificate(&after), second);
    assert!(
        stack.log().contains("TLS file not reloaded"),
        "{}",
        stack.log()
    );
    assert_eq!(get(&mut held, 3).await, 204);
    // SIGHUP reads the pair again too.
    let third = pki.leaf("server", &["localhost"], None);
    let pid = stack.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    reloads_reach(&stack, "success", 2.0).await;
    let last = connect(&stack, &trust).await.unwrap();
    assert_eq!(served_certificate(&last), third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_asked_for_with_client_ca() {
    let pki = Pki::new("server");
    pki.leaf("server", &["localhost"], None);
    let clients = Pki::new("clients");
    clients.leaf("caller", &["internal-caller"], None);
    let strangers = Pki::new("strangers");
    strangers.leaf("caller", &["someone"], None);
    let extra = format!("  client_ca: {}\n", clients.ca_path());
    let stack = start(&tls_config(&pki, &extra)).await;
    let with = |p: &Pki| {
        connector(
            &pki.path("ca.pem"),
            Some((&p.path("caller.pem"), &p.path("caller.key"))),
        )
    };
    let mut accepted = connect(&stack, &with(&clients)).await.unwrap();
    assert_eq!(get(&mut accepted, 1).await, 204);
    // No certificate, or one of another CA: no request gets through.
    for connector in [with(&strangers), connector(&pki.path("ca.pem"), None)] {
        assert!(
            refused(&stack, &connector).await,
            "a request got through without a client certificate of the CA"
        );
    }
    // The CA file replaced: read again like the certificate, the
    // connection already open goes on, new ones are verified against the
    // new CA.
    let new_ca = std::fs::read_to_string(strangers.path("ca.pem")).unwrap();
    write_atomically(&clients.path("ca.pem"), &new_ca);
    reloads_reach(&stack, "success", 1.0).await;
    assert_eq!(get(&mut accepted, 2).await, 204);
    let mut newcomer = connect(&stack, &with(&strangers)).await.unwrap();
    assert_eq!(get(&mut newcomer, 3).await, 204);
    assert!(refused(&stack, &with(&clients)).await);
}

/// Whether a connection made with `connector` is refused: at the
/// handshake, or (TLS 1.3: the server's refusal arrives after the
/// client's handshake ends) at the first read.
async fn refused(stack: &Stack, connector: &tokio_rustls::TlsConnector) -> bool {
    match connect(stack, connector).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(b"GET /_fixtures/empty?i=9 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_by_prior_knowledge() {
    let stack = start("listen_h2c: true\n").await;
    let url = format!(
        "http://127.0.0.1:{}/_fixtures/empty?i=1",
        stack.proxy.port()
    );
    let out = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(out.unwrap(), "2 204");
    // HTTP/1.1 still works on the same listener.
    let url = format!(
        "http://127.0.0.1:{}/_fixtures/empty?i=2",
        stack.proxy.port()
    );
    let out = curl(&[
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(out.unwrap(), "1.1 204");
    stack
        .receiver
        .wait_for("/hooks/p", 2, Duration::from_secs(10))
        .await;
    assert_eq!(pings(&stack).len(), 2);
}

/// A stack in front of `upstream` (with `config`), and the status of one
/// `GET /_fixtures/empty?i=<i>` through it.
async fn through(upstream: &str, config: &str, i: usize) -> (Stack, u16) {
    let stack = Stack::start(Setup {
        upstream: Some(upstream),
        config,
        ..Default::default()
    })
    .await;
    let r = stack
        .client
        .get(stack.url(&format!("/_fixtures/empty?i={i}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (stack, status)
}

/// An HTTPS upstream with a private CA: here another taphook with TLS in
/// front of the importer. Verified against `upstream_tls.ca`; with the
/// wrong CA every request is a 502 and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_its_ca() {
    let pki = Pki::new("upstream");
    pki.leaf("server", &["importer.internal"], None);
    let front = start(&tls_config(&pki, "")).await;
    let upstream = format!("https://127.0.0.1:{}", front.proxy.port());
    let verified = Stack::start(Setup {
        upstream: Some(&upstream),
        config: &format!(
            "upstream_tls:\n  ca: {}\n  server_name: importer.internal\n",
            pki.ca_path()
        ),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let r = verified
        .client
        .get(verified.url("/_fixtures/empty?i=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", verified.log());
    // The request went through the TLS front and got tapped there.
    front
        .receiver
        .wait_for("/hooks/p", 1, Duration::from_secs(10))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let other = Pki::new("other");
    let config = format!(
        "upstream_tls:\n  ca: {}\n  server_name: importer.internal\n",
        other.ca_path()
    );
    let (refused, status) = through(&upstream, &config, 2).await;
    assert_eq!(status, 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !refused.log().to_lowercase().contains("certificate") {
        assert!(
            Instant::now() < deadline,
            "no reason logged:\n{}",
            refused.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The wrong name is refused too, even with the right CA.
    let config = format!(
        "upstream_tls:\n  ca: {}\n  server_name: elsewhere\n",
        pki.ca_path()
    );
    let (_misnamed, status) = through(&upstream, &config, 3).await;
    assert_eq!(status, 502);
}

#[test]
fn a_bad_certificate_is_a_clear_start_up_error() {
    let pki = Pki::new("bad");
    pki.leaf("server", &["localhost"], None);
    std::fs::write(pki.path("server.key"), "not a key\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = hand_config(dir.path(), "http://127.0.0.1:9", &tls_config(&pki, ""));
    let (ok, text) = taphook_output(&["run", "--config"], &config.path);
    assert!(!ok, "{text}");
    assert!(text.contains("tls.key"), "{text}");
    assert!(text.contains(&path_of(&pki.path("server.key"))), "{text}");
    // `taphook check` reads the files as a start would.
    let (ok, text) = taphook_output(&["check", "--config"], &config.path);
    assert!(!ok, "{text}");
    assert!(text.contains("taphook.yaml:1: tls.key"), "{text}");
}

/// The upstream asks for a client certificate (mTLS): with
/// `upstream_tls.client_cert` taphook presents one and gets through;
/// without, every request is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_the_upstream() {
    let pki = Pki::new("upstream-mtls");
    pki.leaf("server", &["importer.internal"], None);
    let callers = Pki::new("callers");
    callers.leaf("taphook", &["taphook"], None);
    let extra = format!("  client_ca: {}\n", callers.ca_path());
    let front = start(&tls_config(&pki, &extra)).await;
    let upstream = format!("https://127.0.0.1:{}", front.proxy.port());
    let tls = |with_cert: bool| {
        let mut text = format!(
            "upstream_tls:\n  ca: {}\n  server_name: importer.internal\n",
            pki.ca_path()
        );
        if with_cert {
            text.push_str(&format!(
                "  client_cert: {}\n  client_key: {}\n",
                path_of(&callers.path("taphook.pem")),
                path_of(&callers.path("taphook.key"))
            ));
        }
        text
    };
    let config = tls(true);
    let (presenting, status) = through(&upstream, &config, 1).await;
    assert_eq!(status, 204, "{}", presenting.log());
    let config = tls(false);
    let (_anonymous, status) = through(&upstream, &config, 2).await;
    assert_eq!(status, 502);
}

const UPLOAD_RULES: &str = "routes:\n  - name: upload\n    event: uploaded\n    method: POST\n    path: /upload\n    data:\n      version: $response.body.version\n      bytes: $response.body.bytes\nwebhooks:\n  - key: u\n    url: {receiver}/hooks/u\n    events: [uploaded]\n";

/// An HTTPS server's side: the pair in `pki`'s `server.*`, ALPN `alpn`.
fn acceptor(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS upstream that offers HTTP/2: `upstream_tls.h2: auto` (the
/// default) speaks it, `off` keeps to HTTP/1.1, and one that offers only
/// HTTP/1.1 gets HTTP/1.1 from `auto`. The tap is the same on each: the
/// upstream's answer, read back through taphook, is in the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_an_upstream_that_offers_it() {
    let pki = Pki::new("h2-upstream");
    pki.leaf("server", &["importer.internal"], None);
    let both = upstream::spawn(Some(acceptor(&pki, &[b"h2", b"http/1.1"]))).await;
    let h1_only = upstream::spawn(Some(acceptor(&pki, &[b"http/1.1"]))).await;
    const CSV: &str = "id,email\n1,ada@example.com\n";
    for (addr, h2, version) in [
        (both, "", "HTTP/2.0"),
        (both, "  h2: off\n", "HTTP/1.1"),
        (h1_only, "  h2: auto\n", "HTTP/1.1"),
    ] {
        let upstream = format!("https://127.0.0.1:{}", addr.port());
        let config = format!(
            "upstream_tls:\n  ca: {}\n  server_name: importer.internal\n{h2}",
            pki.ca_path()
        );
        let stack = Stack::start(Setup {
            upstream: Some(&upstream),
            config: &config,
            rules: vec![("upload.yaml", UPLOAD_RULES.to_string())],
            ..Default::default()
        })
        .await;
        let r = stack
            .client
            .post(stack.url("/upload"))
            .body(CSV)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", stack.log());
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer,
            json!({"version": version, "bytes": CSV.len()}),
            "{h2:?}"
        );
        let got = stack
            .receiver
            .wait_for("/hooks/u", 1, Duration::from_secs(10))
            .await;
        assert_eq!(
            got[0].json()["data"],
            json!({"version": version, "bytes": CSV.len()}),
            "{h2:?}"
        );
    }
}

/// An `https://` webhook whose receiver has a private CA's certificate
/// (here another taphook with TLS in front of the importer, which echoes
/// a POST): delivered when `delivery.ca` names the CA, refused without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_verified_against_the_delivery_ca() {
    let pki = Pki::new("receiver");
    pki.leaf("server", &["localhost"], None);
    let front = start(&tls_config(&pki, "")).await;
    let rules = vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: private\n    url: https://localhost:{}/_fixtures/echo\n    events: [embed_initialized]\n    retry: {{ on: [error], max_retries: 1, backoff: [100ms] }}\n",
            front.proxy.port()
        ),
    )];
    let outcome = |outcome: &str| {
        format!("taphook_deliveries_total{{outcome=\"{outcome}\",webhook=\"private\"}}")
    };
    // `localhost` is also ::1, where the front does not listen.
    let config = format!("delivery:\n  ca: {}\n", pki.ca_path());
    let trusted = Stack::start(Setup {
        rules: rules.clone(),
        config: &config,
        allow_private_networks: Some("[127.0.0.0/8]"),
        ..Default::default()
    })
    .await;
    trusted
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let delivered = outcome("delivered");
    assert_eq!(
        trusted.wait_metric(&delivered, 1.0).await,
        1.0,
        "{}",
        trusted.log()
    );
    let untrusted = Stack::start(Setup {
        rules,
        allow_private_networks: Some("[127.0.0.0/8]"),
        ..Default::default()
    })
    .await;
    untrusted
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let dead = outcome("dead");
    assert_eq!(untrusted.wait_metric(&dead, 1.0).await, 1.0);
}
