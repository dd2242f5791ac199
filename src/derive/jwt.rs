//! JWT claims: decoded from base64url, verified with HS256 only when a
//! secret is configured (the upstream has already accepted the token).

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Tokens longer than this are not decoded.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claims of `token`, or `None` when it is not a well-formed JWT (or
/// fails verification against `hs256_secret`).
pub fn claims(token: &str, hs256_secret: Option<&[u8]>) -> Option<Value> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.trim().split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    if let Some(secret) = hs256_secret {
        verify_hs256(header, payload, signature, secret)?;
    }
    let bytes = decode(payload)?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        v @ Value::Object(_) => Some(v),
        _ => None,
    }
}

fn decode(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(part)
        .or_else(|_| URL_SAFE.decode(part))
        .ok()
}

fn verify_hs256(header: &str, payload: &str, signature: &str, secret: &[u8]) -> Option<()> {
    let decoded: Value = serde_json::from_slice(&decode(header)?).ok()?;
    if decoded.get("alg").and_then(Value::as_str) != Some("HS256") {
        return None;
    }
    // The MAC covers the token's own encoded header and payload.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&decode(signature)?).ok()
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
        let (h, p) = (
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!(
            "{h}.{p}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn decodes_without_verification() {
        let t = sign(r#"{"alg":"HS256"}"#, r#"{"user_id":"u1"}"#, b"k");
        assert_eq!(claims(&t, None).unwrap()["user_id"], "u1");
        assert!(claims("not.a-jwt", None).is_none());
        assert!(claims("a.%%%.c", None).is_none());
    }

    #[test]
    fn verifies_hs256_when_configured() {
        let t = sign(r#"{"alg":"HS256"}"#, r#"{"user_id":"u1"}"#, b"k");
        assert!(claims(&t, Some(b"k")).is_some());
        assert!(claims(&t, Some(b"other")).is_none());
    }

    #[test]
    fn reads_bearer() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("basic abc"), None);
    }
}
