//! `{"hash": value}`: a keyed hash (HMAC-SHA256) of a value, for session
//! keys and fields that must not carry a credential. Keyed with the
//! config's `session_secret`, so the same cookie gives the same key on
//! every restart and replica, and a receiver that sees the hash cannot
//! recover the cookie nor test a guess without the secret.
//!
//! The operator reads its key from the thread that evaluates it: the
//! derive stage sets it around each exchange ([`with_key`]), so several
//! pipelines with different secrets can share one process. Evaluated
//! with no key set (a webhook filter, `taphook eval`), it fails, and the
//! expression is null.

use std::cell::RefCell;
use std::sync::Arc;

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::operator::EvalContext;
use datalogic_rs::{CustomOperator, DataValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The operator's name in expressions.
pub const OPERATOR: &str = "hash";

/// The key `taphook explain`, `draft` and `test` hash with when
/// `TAPHOOK_SESSION_SECRET` is not set: their output is then the same on
/// every machine (and differs from a deployment's, which has its own).
pub const OFFLINE_KEY: &str = "taphook-offline-session-secret";

/// Hex digits of a hash: 128 bits.
const HEX_LEN: usize = 32;

/// A `session_secret`, ready to hash with.
#[derive(Clone)]
pub struct HashKey(Arc<[u8]>);

impl HashKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(Arc::from(secret))
    }

    /// The key of the offline tools: `TAPHOOK_SESSION_SECRET`, else
    /// [`OFFLINE_KEY`].
    pub fn offline() -> Self {
        match std::env::var("TAPHOOK_SESSION_SECRET") {
            Ok(s) if !s.is_empty() => Self::new(s.as_bytes()),
            _ => Self::new(OFFLINE_KEY.as_bytes()),
        }
    }

    /// The hash of `text`: 32 lower-case hex digits.
    pub fn hash(&self, text: &str) -> String {
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC accepts every key length")
        };
        mac.update(text.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(HEX_LEN);
        for b in digest.iter().take(HEX_LEN / 2) {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(***)")
    }
}

impl Default for HashKey {
    fn default() -> Self {
        Self::offline()
    }
}

thread_local! {
    static KEY: RefCell<Option<HashKey>> = const { RefCell::new(None) };
}

/// Runs `f` with `key` as the key of `hash` on this thread; the key
/// before is back afterwards, even if `f` panics.
pub fn with_key<R>(key: &HashKey, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<HashKey>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            KEY.with(|k| *k.borrow_mut() = before);
        }
    }
    let _restore = Restore(KEY.with(|k| k.replace(Some(key.clone()))));
    f()
}

/// A new secret from the operating system's random source: two v4
/// UUIDs, 244 random bits, as 64 hex digits.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The text a value is hashed as: a string as it is, anything else as
/// compact JSON (so `42` and `"42"`, one session, hash alike).
fn text_of(v: &DataValue<'_>) -> Option<String> {
    match v {
        DataValue::Null => None,
        // An empty cookie or token is no key: hashed, it would be one
        // session for every client without one.
        DataValue::String("") => None,
        DataValue::String(s) => Some(s.to_string()),
        other => Some(other.to_serde_value().to_string()),
    }
}

/// The `hash` operator: one argument hashed as its text; several hashed
/// as the JSON array of them; null (a missing value) stays null.
pub struct HashOperator;

impl CustomOperator for HashOperator {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> datalogic_rs::Result<&'a DataValue<'a>> {
        let text = match args {
            [] => None,
            [one] => text_of(one),
            many if many.iter().any(|a| matches!(a, DataValue::Null)) => None,
            many => Some(
                serde_json::Value::Array(many.iter().map(|a| a.to_serde_value()).collect())
                    .to_string(),
            ),
        };
        let Some(text) = text else {
            return Ok(arena.alloc(DataValue::Null));
        };
        let hashed = KEY.with(|k| k.borrow().as_ref().map(|key| key.hash(&text)));
        match hashed {
            Some(h) => Ok(arena.alloc(DataValue::String(arena.alloc_str(&h)))),
            None => Err(datalogic_rs::Error::custom_message(
                "`hash` has no key here (it hashes in routes, with the session_secret)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_and_key_hash_alike_and_other_keys_do_not() {
        let a = HashKey::new(b"one");
        let b = HashKey::new(b"two");
        assert_eq!(a.hash("sessionid=abc"), a.hash("sessionid=abc"));
        assert_ne!(a.hash("sessionid=abc"), b.hash("sessionid=abc"));
        assert_eq!(a.hash("x").len(), 32);
        assert!(a.hash("x").bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_operator_hashes_with_the_threads_key() {
        use crate::filter::Expr;
        use serde_json::json;
        let key = HashKey::new(b"k");
        let e = Expr::compile(&json!({"hash": "$request.cookies.sid"})).unwrap();
        let doc = json!({"request": {"cookies": {"sid": "abc"}}});
        assert_eq!(
            with_key(&key, || e.eval(&doc)).unwrap(),
            json!(key.hash("abc"))
        );
        // A missing or empty value stays missing: no session rather than
        // one for all.
        assert_eq!(with_key(&key, || e.eval(&json!({}))).unwrap(), json!(null));
        let empty = json!({"request": {"cookies": {"sid": ""}}});
        assert_eq!(with_key(&key, || e.eval(&empty)).unwrap(), json!(null));
        // 42 and "42" are one session, hashed alike; several values at once.
        let n = Expr::compile(&json!({"hash": 42})).unwrap();
        assert_eq!(
            with_key(&key, || n.eval(&doc)).unwrap(),
            json!(key.hash("42"))
        );
        let two = Expr::compile(&json!({"hash": ["a", "$request.cookies.sid"]})).unwrap();
        assert_eq!(
            with_key(&key, || two.eval(&doc)).unwrap(),
            json!(key.hash(r#"["a","abc"]"#))
        );
        // No key (a webhook filter): an error, never an unkeyed hash.
        assert!(e.eval(&doc).is_err());
    }
}
