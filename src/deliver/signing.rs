//! Standard Webhooks signing: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
//! one per secret, space-separated, so receivers can rotate secrets).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use crate::rules::model::SigningKey;

const PREFIX: &str = "whsec_";

/// Decodes a `whsec_<base64>` secret.
pub fn parse_secret(text: &str) -> Result<SigningKey, String> {
    let encoded = text
        .strip_prefix(PREFIX)
        .ok_or("a signing secret starts with `whsec_`")?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("signing secret is not valid base64 after `whsec_`: {e}"))?;
    if key.is_empty() {
        return Err("signing secret is empty".into());
    }
    Ok(SigningKey(key))
}

/// The three headers for a message, signed now.
pub fn headers(id: &str, body: &[u8], keys: &[SigningKey]) -> Vec<(HeaderName, HeaderValue)> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signatures: Vec<String> = keys
        .iter()
        .map(|k| format!("v1,{}", sign(&k.0, id, timestamp, body)))
        .collect();
    let mut out = Vec::new();
    let mut push = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.push((HeaderName::from_static(name), v));
        }
    };
    push("webhook-id", id.to_string());
    push("webhook-timestamp", timestamp.to_string());
    push("webhook-signature", signatures.join(" "));
    out
}

fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_%%%").is_err());
        assert!(parse_secret("whsec_").is_err());
    }

    #[test]
    fn matches_the_specs_example() {
        // The Standard Webhooks specification's example.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key.0,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
