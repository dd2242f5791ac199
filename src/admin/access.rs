//! Who calls the `/v1` API and what they may do: a bearer token from
//! `admin_tokens` (or `admin_token`, role `admin`), compared in constant
//! time; its role against the one the route needs (`read` for what reads,
//! `operate` for retry, replay, enable and test events, `admin` for
//! webhooks and the OS1 registry). A call beyond the token's role is a
//! 403 naming the role it needs. Every state-changing call, allowed or
//! not, goes to the audit trail ([`super::audit`]) under the token's name.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{audit, error, ApiError};
use crate::app::Shared;
use crate::config::{AdminToken, Role};

/// The caller, as the handlers and the audit trail see it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The role a call needs: reading needs `read`; sending again, enabling
/// and test events need `operate`; the rest (webhooks, the registry)
/// `admin`.
pub fn required_role(method: &Method, route: &str) -> Role {
    if method == Method::GET || method == Method::HEAD {
        return Role::Read;
    }
    const OPERATE: &[&str] = &[
        "/v1/deliveries/{id}/retry",
        "/v1/deliveries/retry",
        "/v1/deliveries/replay",
        "/v1/event-webhooks/{key}/enable",
        "/v1/event-webhooks/{key}/test",
        "/v1/events",
    ];
    if OPERATE.contains(&route) {
        Role::Operate
    } else {
        Role::Admin
    }
}

/// The `/v1` API's gate: the token, its role, and the audit trail.
pub async fn require_token(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let tokens = &shared.config.admin_tokens;
    if tokens.is_empty() {
        return unauthorized(
            "the admin API is closed: set admin_token or admin_tokens in the config",
            None,
        );
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::derive::jwt::bearer);
    let caller = match given {
        Some(t) => match find(tokens, t) {
            Some(found) => Caller {
                name: found.name.clone(),
                role: found.role,
            },
            None => return unauthorized("wrong bearer token", Some("invalid_token")),
        },
        None => return unauthorized("missing bearer token", None),
    };
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let target = percent_decoded(request.uri().path());
    let needed = required_role(&method, &route);
    let changes = method != Method::GET && method != Method::HEAD;
    let response = if caller.role < needed {
        forbidden(&caller, needed)
    } else {
        request.extensions_mut().insert(caller.clone());
        next.run(request).await
    };
    if changes {
        let entry = audit::entry(&caller, &method, &route, &target, &response);
        audit::record(&shared, entry).await;
    }
    response
}

/// The token `given` is, compared with each in constant time (all are
/// compared, so which one matched does not show either).
fn find<'a>(tokens: &'a [AdminToken], given: &str) -> Option<&'a AdminToken> {
    let mut found = None;
    for t in tokens {
        if token_matches(given.as_bytes(), t.token.expose().as_bytes()) {
            found = Some(t);
        }
    }
    found
}

/// Compares in constant time: both sides are hashed first, so neither
/// the token's bytes nor its length show in how long a wrong guess takes.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(given).ct_eq(&Sha256::digest(token)).into()
}

fn forbidden(caller: &Caller, needed: Role) -> Response {
    let message = format!(
        "this call needs the `{}` role; the token `{}` has `{}`",
        needed.name(),
        caller.name,
        caller.role.name()
    );
    let mut response = ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    response
        .extensions_mut()
        .insert(audit::Denied(needed.name()));
    response
}

fn unauthorized(message: &str, reason: Option<&str>) -> Response {
    let challenge = match reason {
        Some(e) => format!("Bearer realm=\"taphook admin\", error=\"{e}\""),
        None => "Bearer realm=\"taphook admin\"".to_string(),
    };
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    if let Ok(v) = header::HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

fn percent_decoded(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// `GET /v1/whoami`: the signed-in token's name, its role, what it may
/// do (the console hides the rest), and the store.
pub async fn whoami(
    State(shared): State<Arc<Shared>>,
    caller: axum::Extension<Caller>,
) -> Response {
    let can = |role: Role| caller.role >= role;
    Json(json!({
        "name": caller.name,
        "role": caller.role.name(),
        // What the deliveries API can do depends on it (the JetStream
        // store sends dead letters again, not pending or delivered ones).
        "store": if shared.jetstream.is_some() { "jetstream" } else { "embedded" },
        "can": {
            "read": can(Role::Read),
            "operate": can(Role::Operate),
            "admin": can(Role::Admin),
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"", b"a"));
    }

    #[test]
    fn roles_by_route() {
        assert_eq!(required_role(&Method::GET, "/v1/audit"), Role::Read);
        assert_eq!(
            required_role(&Method::POST, "/v1/deliveries/{id}/retry"),
            Role::Operate
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/event-webhooks/{key}/test"),
            Role::Operate
        );
        assert_eq!(
            required_role(&Method::PUT, "/v1/event-webhooks/{key}"),
            Role::Admin
        );
        assert_eq!(required_role(&Method::POST, "/v1/apps"), Role::Admin);
        assert_eq!(
            required_role(&Method::DELETE, "/v1/event-webhooks/{key}"),
            Role::Admin
        );
    }
}
