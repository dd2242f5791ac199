//! RabbitMQ (AMQP 0.9.1) destinations:
//! `amqp://[user:password@]host[:5672]/vhost?exchange=importer&routing_key={event_type}`
//! (`amqps://` for TLS). Each attempt publishes the body to the exchange
//! with the routing key, persistent (delivery mode 2), mandatory, with the
//! headers as the message's headers, `message_id` set to the message id
//! (the event's UUID) and `content_type` the format's.
//!
//! The channel is in confirm mode: only the broker's ack makes the attempt
//! a success. A nack, or an ack of a message the broker returned because no
//! queue was bound to its routing key (unroutable), is a failed attempt,
//! retried as the webhook's retry policy says.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{AsyncTcpStream, BasicProperties, Channel, Connection, ConnectionProperties};

use super::destination::{self, acknowledged, within, Message, Pool};
use super::guard::Guard;
use super::retry::Attempt;
use crate::rules::model::Webhook;

/// Checks an `amqp://` URL as written: `exchange` and `routing_key` in
/// the query (placeholders allowed in the routing key), the vhost in the
/// path.
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    for (k, _) in url.query_pairs() {
        if !matches!(&*k, "exchange" | "routing_key") {
            return Err(format!("unknown parameter `{k}` (exchange, routing_key)"));
        }
    }
    if destination::param(url, "routing_key").is_none() {
        return Err(
            "a routing key is needed: amqp://host/vhost?exchange=importer&routing_key={event_type}"
                .into(),
        );
    }
    let routing_key = destination::param(url, "routing_key").unwrap_or_default();
    destination::check_template("routing key", &routing_key, &[])?;
    let exchange = destination::param(url, "exchange").unwrap_or_default();
    destination::check_template("exchange", &exchange, &[])?;
    Ok(())
}

/// The routing key's template.
pub fn target(url: &reqwest::Url) -> String {
    destination::param(url, "routing_key").unwrap_or_default()
}

/// The connections (one channel in confirm mode each) to RabbitMQ.
pub struct Publishers {
    pool: Pool<(std::sync::Arc<Connection>, Channel)>,
    /// `delivery.ca`, trusted for `amqps://` beside the public roots.
    ca: Option<destination::Ca>,
}

impl Publishers {
    pub fn new(ca: Option<destination::Ca>) -> Self {
        Self {
            pool: Pool::default(),
            ca,
        }
    }

    pub async fn publish(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        message: Message<'_>,
        timeout: Duration,
    ) -> Attempt {
        let key = Pool::<(std::sync::Arc<Connection>, Channel)>::key(&webhook.url);
        let channel = match self.channel(guard, webhook, &key, timeout).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut headers = FieldTable::default();
        for (name, value) in message.text_headers() {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message.id.into())
            .with_headers(headers);
        if let Some(ct) = message.content_type() {
            properties = properties.with_content_type(ct.into());
        }
        let exchange = destination::param(&webhook.url, "exchange").unwrap_or_default();
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let routing_key = message.target;
        let body = message.body;
        let attempt = within(timeout, async move {
            let confirm = match channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &body,
                    properties,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => return Attempt::Error(format!("AMQP publish: {e}")),
            };
            match confirm.await {
                Ok(Confirmation::Ack(None)) => acknowledged(),
                Ok(Confirmation::Ack(Some(returned))) => Attempt::Error(format!(
                    "unroutable: RabbitMQ returned the message ({} {})",
                    returned.reply_code, returned.reply_text
                )),
                Ok(Confirmation::Nack(_)) => {
                    Attempt::Error("RabbitMQ refused the message (nack)".into())
                }
                Ok(Confirmation::NotRequested) => Attempt::Error("no publisher confirm".into()),
                Err(e) => Attempt::Error(format!("AMQP publish: {e}")),
            }
        })
        .await;
        self.pool.keep_if_acknowledged(&key, attempt)
    }

    async fn channel(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        key: &str,
        timeout: Duration,
    ) -> Result<Channel, Attempt> {
        if let Some((_, ch)) = self.pool.get(key, |(c, ch)| {
            c.status().connected() && ch.status().connected()
        }) {
            return Ok(ch);
        }
        let addr = destination::vetted(guard, webhook).await?;
        let url = &webhook.url;
        let (user, pass) = destination::credentials(url);
        let vhost = match destination::path(url).as_str() {
            "" => "%2f".to_string(),
            v => percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        };
        let auth = if user.is_empty() {
            String::new()
        } else {
            let enc = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            format!(
                "{}:{}@",
                enc(&user),
                enc(pass.as_deref().unwrap_or_default())
            )
        };
        // The URI names the host (TLS verifies that name); the socket goes
        // to the address the guard vetted.
        let host = url.host_str().unwrap_or_default().to_string();
        let uri = format!("{}://{auth}{host}:{}/{vhost}", url.scheme(), addr.port());
        let uri: lapin::uri::AMQPUri = uri
            .parse()
            // The parser's message repeats the URI, credentials and all.
            .map_err(|_| Attempt::Error(format!("AMQP URL for {host}: not valid")))?;
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca.as_ref().map(|ca| ca.pem().to_string()),
        };
        let opening = async {
            let runtime = lapin::runtime::default_runtime()?;
            let conn = Connection::connector(
                uri,
                runtime,
                async move |uri: lapin::uri::AMQPUri, runtime| {
                    let stream = AsyncTcpStream::connect(&runtime, addr).await?;
                    Ok(match uri.scheme {
                        lapin::uri::AMQPScheme::AMQPS => {
                            stream.into_tls(&uri.authority.host, tls.as_ref()).await?
                        }
                        lapin::uri::AMQPScheme::AMQP => stream,
                    })
                },
                ConnectionProperties::default(),
            )
            .await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((conn, ch))
        };
        let (conn, ch) = destination::connect("RabbitMQ", &host, timeout, opening).await?;
        self.pool
            .put(key.to_string(), (std::sync::Arc::new(conn), ch.clone()));
        Ok(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn the_routing_key_is_needed_and_checked() {
        assert!(check_url(&url(
            "amqp://mq/vh?exchange=importer&routing_key={event_type}"
        ))
        .is_ok());
        assert!(check_url(&url("amqp://mq/?exchange=importer"))
            .unwrap_err()
            .contains("routing key is needed"));
        assert!(check_url(&url("amqp://mq/?routing_key=a&queue=b"))
            .unwrap_err()
            .contains("unknown parameter"));
        assert_eq!(
            target(&url("amqp://mq/?routing_key=imp.{event_type}")),
            "imp.{event_type}"
        );
    }
}
