//! A secret string that never prints: `Debug` shows `***`, so a secret
//! cannot reach a log line through `{:?}`; read from a rules or config
//! file, a value of the wrong type is refused without echoing it (serde's
//! own message would quote a token written as a number).

/// A webhook secret, token or key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What the admin API shows in place of a secret.
pub const MASK: &str = "********";

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

/// A secret of the wrong type: say which type, never the value.
fn not_a_string<E: serde::de::Error>(kind: &str) -> E {
    E::custom(format!(
        "invalid type: {kind}, expected a string (quote it; the value is not shown)"
    ))
}

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(not_a_string("boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(not_a_string("integer"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(not_a_string("integer"))
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(not_a_string("integer"))
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(not_a_string("integer"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(not_a_string("number"))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(not_a_string("bytes"))
    }
}

/// A URL for showing: without credentials, and with the query (which may
/// hold tokens) replaced by `…`.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    let had_query = u.query().is_some();
    u.set_query(None);
    if had_query {
        format!("{u}?…")
    } else {
        u.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_credentials_and_query() {
        let u = reqwest::Url::parse("https://user:pw@hooks.example.com/x?token=abc").unwrap();
        assert_eq!(super::redact_url(&u), "https://hooks.example.com/x?…");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let err = serde_json::from_str::<super::Secret>("424242").unwrap_err();
        assert!(!err.to_string().contains("424242"), "{err}");
        assert!(err.to_string().contains("expected a string"), "{err}");
        let err = serde_json::from_str::<super::Secret>("[\"hunter2\"]").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let s: super::Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(
            format!("{:?}", Some(super::Secret::new("hunter2"))),
            "Some(***)"
        );
    }
}
