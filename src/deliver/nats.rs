//! NATS destinations: `nats://[user:password@]host[:4222]/subject.{event_type}`
//! (a user alone is a token). Over TLS when the server requires it, or
//! always with `tls://`: the certificate verified for the URL's host name
//! against the public roots and `delivery.ca`. Each attempt publishes the body to the
//! subject, the headers (content type, Standard Webhooks signature,
//! `traceparent`) as message headers, and `Nats-Msg-Id` set to the
//! message id (the event's UUID), for JetStream's own dedup window.
//!
//! When a stream is bound to the subject the publish is a JetStream one,
//! and only the stream's acknowledgement makes the attempt a success: no
//! ack (a timeout, a stream that refused it) is a failed attempt, retried
//! as the webhook's retry policy says. A subject no stream is bound to
//! (NATS answers "no responders") gets a core publish, flushed: the server
//! has it, and its subscribers get it at most once each.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;

use super::destination::{self, acknowledged, within, Message, Pool};
use super::guard::Guard;
use super::retry::Attempt;
use crate::rules::model::Webhook;

/// Checks a `nats://` URL as written: a subject in the path, no query.
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    if url.query().is_some() || url.fragment().is_some() {
        return Err("no query or fragment: the subject is the path".into());
    }
    let subject = destination::path(url);
    if subject.is_empty() {
        return Err(
            "a subject is needed in the path: nats://host:4222/importer.{event_type}".into(),
        );
    }
    destination::check_template("subject", &subject, &['*', '>'])?;
    if destination::fill(&subject, "x", "x", "x")
        .split('.')
        .any(str::is_empty)
    {
        return Err(format!("subject `{subject}` has an empty token"));
    }
    Ok(())
}

/// The subject's template: the URL's path.
pub fn target(url: &reqwest::Url) -> String {
    destination::path(url)
}

/// The connections to NATS servers.
pub struct Publishers {
    pool: Pool<async_nats::Client>,
    /// The roots a server's TLS certificate is verified against: the
    /// public ones and `delivery.ca`.
    roots: Arc<rustls::RootCertStore>,
}

impl Publishers {
    pub fn new(ca: Option<&destination::Ca>) -> Self {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in ca.iter().flat_map(|ca| ca.der()) {
            // `Ca::read` parsed them; one the store refuses is left out.
            let _ = roots.add(rustls::pki_types::CertificateDer::from(cert.to_vec()));
        }
        Self {
            pool: Pool::default(),
            roots: Arc::new(roots),
        }
    }

    /// Publishes `message` for `webhook`; what the attempt came to.
    pub async fn publish(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        message: Message<'_>,
        timeout: Duration,
    ) -> Attempt {
        let client = match self.client(guard, webhook, timeout).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in message.text_headers() {
            headers.insert(name, value);
        }
        headers.insert("Nats-Msg-Id", message.id);
        let js = async_nats::jetstream::new(client.clone());
        let subject = message.target;
        let body = message.body;
        within(timeout, async move {
            use async_nats::jetstream::context::PublishErrorKind;
            let ack = match js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => return Attempt::Error(format!("NATS publish: {e}")),
            };
            match ack {
                Ok(_) => acknowledged(),
                // No stream is bound to the subject: a core publish, flushed.
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    let core = async {
                        client
                            .publish_with_headers(subject, headers, body)
                            .await
                            .map_err(|e| e.to_string())?;
                        client.flush().await.map_err(|e| e.to_string())
                    };
                    match core.await {
                        Ok(()) => acknowledged(),
                        Err(e) => Attempt::Error(format!("NATS publish: {e}")),
                    }
                }
                Err(e) if e.kind() == PublishErrorKind::TimedOut => Attempt::Timeout,
                Err(e) => Attempt::Error(format!("NATS JetStream did not acknowledge: {e}")),
            }
        })
        .await
    }

    /// The client for `webhook`'s server: kept, or connected now to an
    /// address the guard allows.
    async fn client(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        timeout: Duration,
    ) -> Result<async_nats::Client, Attempt> {
        let key = Pool::<async_nats::Client>::key(&webhook.url);
        if let Some(c) = self.pool.get(&key, |c| {
            c.connection_state() == async_nats::connection::State::Connected
        }) {
            return Ok(c);
        }
        let addr = destination::vetted(guard, webhook).await?;
        // Only the vetted address: servers a cluster advertises were never
        // through the guard. A client that lost it is made again (through
        // the guard, the name resolved anew) at the next attempt.
        let host = webhook.url.host_str().unwrap_or_default();
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .ignore_discovered_servers()
            .tls_client_config(self.tls(host)?)
            .require_tls(webhook.url.scheme() == "tls");
        match destination::credentials(&webhook.url) {
            (user, Some(pass)) => options = options.user_and_password(user, pass),
            (token, None) if !token.is_empty() => options = options.token(token),
            _ => {}
        }
        let connecting = options.connect(format!("nats://{addr}"));
        let client = destination::connect("NATS", host, timeout, connecting).await?;
        self.pool.put(key, client.clone());
        Ok(client)
    }
}

impl Publishers {
    /// TLS for a server dialled at its vetted address: the certificate is
    /// verified for `host`, the name in the URL (the client would verify
    /// it for the address it dials).
    fn tls(&self, host: &str) -> Result<rustls::ClientConfig, Attempt> {
        let fail = |e: &dyn std::fmt::Display| Attempt::Error(format!("NATS TLS for {host}: {e}"));
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| fail(&e))?;
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ForName { inner, name }))
            .with_no_client_auth())
    }
}

/// WebPKI's verification of a server's certificate, for `name` whatever
/// name the connection was made with.
#[derive(Debug)]
struct ForName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ForName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn subjects_are_checked() {
        assert!(check_url(&url("nats://127.0.0.1:4222/importer.{event_type}")).is_ok());
        assert!(check_url(&url("nats://nats/importer.{webhook}.{template_key}")).is_ok());
        assert!(check_url(&url("nats://nats:4222/"))
            .unwrap_err()
            .contains("subject is needed"));
        assert!(check_url(&url("nats://nats/a.*"))
            .unwrap_err()
            .contains("not allowed"));
        assert!(check_url(&url("nats://nats/a..b"))
            .unwrap_err()
            .contains("empty token"));
        assert!(check_url(&url("nats://nats/a?x=1")).is_err());
        assert_eq!(
            target(&url("nats://h/importer.{event_type}")),
            "importer.{event_type}"
        );
    }
}
