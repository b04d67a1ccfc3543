//! Bearer-token authentication of the HTTP API (RFC 6750, ADR 012).
//!
//! A token reads `berth_<id>_<secret>`: `id` is 12 hex digits, public, the key of its record
//! in etcd and what logs and revocation name; `secret` is 32 random bytes, base64url without
//! padding, of which etcd keeps only the SHA-256. A SHA-256, not a password hash such as
//! argon2: the secret has 256 bits of entropy, so there is nothing to slow a guesser down
//! for, and every request checks one. Tokens are minted and revoked by the operator command
//! `berth-control-plane token` ([`crate::operator`]).
//!
//! Every request but `GET /`, `GET /v1/version` and `GET /metrics` needs `Authorization: Bearer
//! <token>` when authentication is on. A `read-only` token may GET and HEAD; anything else
//! needs `read-write`. No token, or one that is unknown, revoked or malformed, is a 401 with
//! `WWW-Authenticate: Bearer realm="berth"` (and `error="invalid_token"` when one was given,
//! RFC 6750 §3.1); a token whose scope is too small is a 403 with
//! `error="insufficient_scope"`. Both carry the API's error body. The token itself is never
//! logged nor echoed.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use store::{ApiTokenRecord, Store, TokenScope};

use super::ApiError;

const PREFIX: &str = "berth_";
const ID_HEX_LEN: usize = 12;
/// Requests that never need a token: discovery (`GET /`, which only names the OpenAPI
/// document), liveness and version probes carry no data.
pub(crate) const OPEN_PATHS: [&str; 3] = ["/", "/v1/version", "/metrics"];

/// A token as minted: its record (for etcd) and the token itself, shown to the operator once.
pub struct MintedToken {
    pub record: ApiTokenRecord,
    pub token: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A new random token named `name` with `scope`.
pub fn mint(name: &str, scope: TokenScope) -> MintedToken {
    let id = hex::encode(rand::random::<[u8; ID_HEX_LEN / 2]>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    MintedToken {
        record: ApiTokenRecord {
            id: id.clone(),
            name: name.to_string(),
            scope,
            sha256: sha256_hex(&secret),
            created_at: Utc::now(),
        },
        token: format!("{PREFIX}{id}_{secret}"),
    }
}

/// The id and secret of a well-formed token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_HEX_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Whether `secret` is the one `record` was minted with (compared in constant time).
pub fn matches(record: &ApiTokenRecord, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    record
        .sha256
        .as_bytes()
        .ct_eq(sha256_hex(secret).as_bytes())
        .into()
}

/// Whether a request of `method` is allowed with a token of `scope`.
pub fn allows(scope: TokenScope, method: &Method) -> bool {
    match scope {
        TokenScope::ReadWrite => true,
        TokenScope::ReadOnly => matches!(*method, Method::GET | Method::HEAD),
    }
}

/// What the authentication layer needs: the store holding token records, and whether it is on.
#[derive(Clone)]
pub struct ApiAuth {
    store: Store,
    enabled: bool,
}

impl ApiAuth {
    pub fn new(store: Store, enabled: bool) -> Self {
        ApiAuth { store, enabled }
    }

    /// The token record that `authorization` (an `Authorization` header value) proves, or
    /// the refusal. Reads etcd once, so a revoked token is refused from the next request on,
    /// whichever replica serves it.
    async fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<ApiTokenRecord, Refusal> {
        let Some(value) = authorization else {
            return Err(Refusal::Missing);
        };
        // The scheme is case-insensitive (RFC 7235 §2.1).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(Refusal::Invalid)?;
        let (id, secret) = parse(token).ok_or(Refusal::Invalid)?;
        let record = self
            .store
            .api_token(id)
            .await
            .map_err(|e| Refusal::Store(e.into()))?
            .ok_or(Refusal::Invalid)?;
        if matches(&record, secret) {
            Ok(record)
        } else {
            Err(Refusal::Invalid)
        }
    }
}

enum Refusal {
    Missing,
    Invalid,
    Store(ApiError),
}

/// The middleware: lets a request through, or answers 401/403 in the API's error shape.
pub async fn require_token(State(auth): State<ApiAuth>, request: Request, next: Next) -> Response {
    if !auth.enabled || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let record = match auth
        .authenticate(request.headers().get(header::AUTHORIZATION))
        .await
    {
        Ok(r) => r,
        Err(Refusal::Missing) => {
            return challenge(
                ApiError::Unauthorized(
                    "this API needs a bearer token (Authorization: Bearer <token>); an operator \
                     creates one with `berth-control-plane token create`"
                        .into(),
                ),
                r#"Bearer realm="berth""#,
            );
        }
        Err(Refusal::Invalid) => {
            tracing::warn!(path = %request.uri().path(), "refused a request with an invalid bearer token");
            return challenge(
                ApiError::Unauthorized(
                    "the bearer token is not valid: malformed, unknown or revoked".into(),
                ),
                r#"Bearer realm="berth", error="invalid_token""#,
            );
        }
        Err(Refusal::Store(e)) => return e.into_response(),
    };
    if !allows(record.scope, request.method()) {
        tracing::warn!(token_id = %record.id, method = %request.method(), path = %request.uri().path(), "refused: read-only token");
        return challenge(
            ApiError::Forbidden(format!(
                "token {} ({}) is {}; {} needs a read-write token",
                record.id,
                record.name,
                record.scope.as_str(),
                request.method()
            )),
            r#"Bearer realm="berth", error="insufficient_scope""#,
        );
    }
    next.run(request).await
}

fn challenge(error: ApiError, www_authenticate: &'static str) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(www_authenticate),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_and_match_only_their_own_record() {
        let a = mint("ci", TokenScope::ReadOnly);
        let b = mint("ci", TokenScope::ReadOnly);
        let (id, secret) = parse(&a.token).unwrap();
        assert_eq!(id, a.record.id);
        assert!(matches(&a.record, secret));
        assert!(!matches(&b.record, secret));
        assert!(!a.record.sha256.contains(secret));
        assert!(!format!("{a:?}").contains(secret));
        assert!(!format!("{:?}", a.record).contains(&a.record.sha256));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in [
            "",
            "berth_",
            "berth_0123456789ab",
            "berth_0123456789ab_",
            "berth_0123456789AB_x",
            "berth_0123456789a_xx",
            "other_0123456789ab_x",
            "berth_0123456789abx",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse("berth_0123456789ab_s"), Some(("0123456789ab", "s")));
    }

    #[test]
    fn read_only_tokens_read_and_read_write_tokens_do_everything() {
        assert!(allows(TokenScope::ReadOnly, &Method::GET));
        assert!(allows(TokenScope::ReadOnly, &Method::HEAD));
        for m in [Method::POST, Method::DELETE, Method::PUT, Method::PATCH] {
            assert!(!allows(TokenScope::ReadOnly, &m), "{m}");
            assert!(allows(TokenScope::ReadWrite, &m), "{m}");
        }
    }
}
