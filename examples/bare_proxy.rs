//! The load harnesses' floor: a bare Pingora reverse proxy, a `ProxyHttp`
//! with one peer and nothing else, built with the same Pingora, the same
//! release profile and the same allocator as taphook.
//!
//! `bare_proxy LISTEN UPSTREAM [CERT KEY]` (`THREADS`, default 1: one
//! worker thread, like the harnesses' taphook); with a certificate and key
//! it speaks TLS with the same settings as taphook's listener (rustls,
//! TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`).

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(HttpPeer);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, tls @ ..] = args.as_slice() else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [CERT KEY]");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: std::env::var("THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let peer = HttpPeer::new(upstream.as_str(), false, String::new());
    let mut proxy = http_proxy_service(&server.configuration, Bare(peer));
    match tls {
        [cert, key] => {
            let mut settings =
                TlsSettings::intermediate(cert, key).expect("the certificate and key");
            settings.enable_h2();
            proxy.add_tls_with_settings(listen, None, settings);
        }
        _ => proxy.add_tcp(listen),
    }
    server.add_service(proxy);
    server.run_forever();
}
