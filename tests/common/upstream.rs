//! An upstream of hyper's own, for what the reference importer does not
//! do: HTTP/2 (over TLS, by ALPN) and WebSocket upgrades. Every answer
//! says which HTTP version the request came in; a body is counted; an
//! upgrade is answered `101` and the upgraded bytes are echoed back.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// Serves on a free loopback port until the test's runtime ends; over
/// TLS when given an acceptor (whose ALPN decides HTTP/2).
pub async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            serve(TokioIo::new(stream)).await;
                        }
                    }
                    None => serve(TokioIo::new(tcp)).await,
                }
            });
        }
    });
    addr
}

async fn serve<I>(io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, hyper::service::service_fn(answer))
        .await;
}

async fn answer(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = format!("{:?}", request.version());
    if request.headers().contains_key(UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let switching = Response::builder()
            .status(101)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "Upgrade")
            .body(Full::default())
            .unwrap();
        return Ok(switching);
    }
    let mut body = request.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => {
                let broken = json!({"version": version, "error": e.to_string()});
                return Ok(Response::builder()
                    .status(400)
                    .body(Full::new(Bytes::from(broken.to_string())))
                    .unwrap());
            }
        }
    }
    let counted = json!({"version": version, "bytes": bytes});
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(counted.to_string())))
        .unwrap())
}
