//! The importer as Pingora's peer: plain HTTP, or HTTPS (`upstream:
//! https://...`) with SNI, verification against the system roots or
//! `upstream_tls.ca` (never skipped), an optional client certificate, and
//! HTTP/2 when the upstream offers it (`upstream_tls.h2: auto`).
//!
//! The peer is built once at start (its address resolved, its files read)
//! and cloned for each request.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use super::tls::{read_certs, read_key, TlsError};
use crate::config::{Upstream, UpstreamH2, UpstreamTls};

/// The peer every request goes to.
pub fn peer(
    address: SocketAddr,
    upstream: &Upstream,
    tls: &UpstreamTls,
) -> Result<HttpPeer, TlsError> {
    if !upstream.tls {
        return Ok(HttpPeer::new(address, false, String::new()));
    }
    let sni = tls
        .server_name
        .clone()
        .unwrap_or_else(|| upstream.host.clone());
    let mut peer = HttpPeer::new(address, true, sni);
    peer.options.verify_cert = true;
    peer.options.verify_hostname = true;
    peer.options.alpn = match tls.h2 {
        UpstreamH2::Auto => ALPN::H2H1,
        UpstreamH2::Off => ALPN::H1,
    };
    if let Some(ca) = &tls.ca {
        let certs: Vec<WrappedX509> = read_certs("upstream_tls.ca", ca)?
            .into_iter()
            .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
            .collect();
        peer.options.ca = Some(Arc::from(certs.into_boxed_slice()));
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let chain: Vec<Vec<u8>> = read_certs("upstream_tls.client_cert", cert)?
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        let key = read_key("upstream_tls.client_key", key)?
            .secret_der()
            .to_vec();
        peer.client_cert_key = Some(Arc::new(CertKey::new(chain, key)));
    }
    Ok(peer)
}
