//! What one attempt sent and what came back, kept with the attempt for
//! the admin API (`attempts[].request`, `attempts[].response`): the
//! request as sent (method, URL without credentials, headers with the
//! signature headers, the body's size), and the answer (status, headers,
//! the body's first 4 KiB, the time to the first byte and in total), or
//! the error and its kind. A credential never goes in: a URL's userinfo
//! and query (shown as `?…`, as everywhere else), `Authorization` and
//! credential-named headers, and cookie values are masked.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::secret::MASK;

/// Bytes of a response body kept with an attempt.
pub const BODY_EXCERPT: usize = 4096;

/// What the attempt sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub method: String,
    pub url: String,
    /// `[name, value]` in the order sent.
    pub headers: Vec<(String, String)>,
    pub body_bytes: usize,
    /// The part of the delivery sent (batches: one request a part).
    pub part: u32,
    /// Where the admin API shows the body sent (filled in when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_url: Option<String>,
}

/// What came back: a response, or the error that stood in its place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Received {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The body's first [`BODY_EXCERPT`] bytes (lossy UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body was longer than what is kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// From sending to the response's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    pub total_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// Why no response came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// `dns`, `connect`, `tls`, `timeout`, `ssrf` or `other`.
    pub kind: String,
    pub message: String,
}

/// One attempt's request and response, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub request: Sent,
    pub response: Received,
}

impl Exchange {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Headers as shown: credentials masked (the `Authorization` scheme
/// kept), cookie values masked with their names kept.
pub fn shown_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), shown_value(name, value)))
        .collect()
}

fn shown_value(name: &HeaderName, value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    match name.as_str() {
        "authorization" | "proxy-authorization" => match text.split_once(' ') {
            Some((scheme, _)) if !scheme.is_empty() => format!("{scheme} {MASK}"),
            _ => MASK.to_string(),
        },
        "cookie" => text
            .split(';')
            .map(|c| match c.split_once('=') {
                Some((k, _)) => format!("{}={MASK}", k.trim()),
                None => c.trim().to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        "set-cookie" => {
            let (pair, attributes) = text.split_once(';').unwrap_or((&text, ""));
            let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            if attributes.is_empty() {
                format!("{name}={MASK}")
            } else {
                format!("{name}={MASK};{attributes}")
            }
        }
        // Signatures are HMACs of the body, not secrets: shown, so a
        // receiver's verification failure can be understood.
        n if n.starts_with("webhook-") => text.into_owned(),
        n if crate::rules::credentials::is_secret_header_name(n) => MASK.to_string(),
        _ => text.into_owned(),
    }
}

/// The kind of a failed exchange, from reqwest's error and its causes.
pub fn failure_kind(e: &reqwest::Error, chain: &str) -> &'static str {
    let lower = chain.to_ascii_lowercase();
    if e.is_timeout() {
        "timeout"
    } else if lower.contains("dns error") || lower.contains("failed to lookup") {
        "dns"
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        "tls"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_signatures_and_mask_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        h.insert("x-api-key", HeaderValue::from_static("k-123"));
        h.insert("webhook-signature", HeaderValue::from_static("v1,abc="));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-session-id", HeaderValue::from_static("s-1"));
        h.insert("x-csrf-token", HeaderValue::from_static("c-1"));
        h.insert("x-request-id", HeaderValue::from_static("r-1"));
        h.insert(
            "set-cookie",
            HeaderValue::from_static("sid=s3cr3t; Path=/; HttpOnly"),
        );
        let shown = shown_headers(&h);
        let get = |n: &str| {
            shown
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("authorization"), format!("Basic {MASK}"));
        assert_eq!(get("x-api-key"), MASK);
        assert_eq!(get("webhook-signature"), "v1,abc=");
        assert_eq!(get("content-type"), "application/json");
        assert_eq!(get("x-session-id"), MASK);
        assert_eq!(get("x-csrf-token"), MASK);
        assert_eq!(get("x-request-id"), "r-1");
        assert_eq!(get("set-cookie"), format!("sid={MASK}; Path=/; HttpOnly"));
    }
}
