//! A secret string that never prints: `Debug` shows `***`, so a secret
//! cannot reach a log line through `{:?}`.

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
    fn debug_hides_the_value() {
        assert_eq!(
            format!("{:?}", Some(super::Secret::new("hunter2"))),
            "Some(***)"
        );
    }
}
