//! Opaque, tamper-evident page tokens for list RPCs.
//!
//! A token is `base64url(json cursor) "." base64url(HMAC-SHA256(scope, json))`. The scope binds
//! a token to the request's filters, so a token issued for one query is refused for another;
//! a token that was edited, truncated or signed with another key is refused with
//! `INVALID_ARGUMENT`, reason `INVALID_PAGE_TOKEN`, never trusted. Every replica of a service
//! must share the key (`page_token_secret`, `RELAY_PAGE_TOKEN_SECRET`); without one, each
//! process makes a random key and its tokens work only against itself.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Sha256;

use crate::error::ApiError;

/// The reason of a refused page token.
pub const INVALID_PAGE_TOKEN: &str = "INVALID_PAGE_TOKEN";

/// Signs and checks page tokens with one key.
#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(..)")
    }
}

impl PageTokens {
    /// Tokens signed with `secret`.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: secret.to_vec(),
        }
    }

    /// Tokens signed with a random key of this process.
    #[must_use]
    pub fn random() -> Self {
        Self::new(&rand::random::<[u8; 32]>())
    }

    fn mac(&self, scope: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// A token for `cursor`, valid only for requests with the same `scope` (a string made of
    /// the request's filters).
    ///
    /// # Panics
    /// When `cursor` cannot be serialized to JSON (a programming error).
    #[must_use]
    pub fn encode<T: Serialize>(&self, scope: &str, cursor: &T) -> String {
        let payload = serde_json::to_vec(cursor).expect("cursor serializes");
        let tag = self.mac(scope, &payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The cursor in `token`; an empty token is `None` (the first page).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` with reason `INVALID_PAGE_TOKEN` naming `field` when the token is
    /// malformed, was altered, or belongs to another scope.
    pub fn decode<T: DeserializeOwned>(
        &self,
        field: &str,
        scope: &str,
        token: &str,
    ) -> Result<Option<T>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let refuse = || {
            ApiError::invalid_with_reason(
                INVALID_PAGE_TOKEN,
                field,
                "is not a page token this server issued for this query; start again without one",
            )
        };
        let (payload, tag) = token.split_once('.').ok_or_else(refuse)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refuse())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refuse())?;
        self.mac(scope, &payload)
            .verify_slice(&tag)
            .map_err(|_| refuse())?;
        serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|_| refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Cursor {
        after: String,
        offset: u32,
    }

    fn refused(result: Result<Option<Cursor>, ApiError>) -> bool {
        matches!(
            result,
            Err(ApiError::InvalidArgument {
                reason: INVALID_PAGE_TOKEN,
                ..
            })
        )
    }

    #[test]
    fn a_token_round_trips_within_its_scope() {
        let tokens = PageTokens::new(b"secret");
        let cursor = Cursor {
            after: "team-9".into(),
            offset: 50,
        };
        let token = tokens.encode("region=north", &cursor);
        let back: Option<Cursor> = tokens
            .decode("page_token", "region=north", &token)
            .expect("valid");
        assert_eq!(back, Some(cursor));
        assert_eq!(
            tokens
                .decode::<Cursor>("page_token", "x", "")
                .expect("empty"),
            None
        );
    }

    /// A cursor holding a float (a distance, a relevance) must come back bit for bit, or the
    /// next page repeats or skips the result at the boundary: serde_json's float_roundtrip.
    #[test]
    fn float_cursors_round_trip_bit_for_bit() {
        let tokens = PageTokens::new(b"k");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[allow(clippy::cast_precision_loss)]
            let d = (x >> 11) as f64 / (1u64 << 53) as f64 * 5000.0;
            let token = tokens.encode("s", &(d, -d / (d + 1.0)));
            let back: (f64, f64) = tokens
                .decode("t", "s", &token)
                .expect("valid")
                .expect("a cursor");
            assert_eq!(back.0.to_bits(), d.to_bits());
            assert_eq!(back.1.to_bits(), (-d / (d + 1.0)).to_bits());
        }
    }

    #[test]
    fn altered_foreign_and_garbage_tokens_are_refused() {
        let tokens = PageTokens::new(b"secret");
        let token = tokens.encode(
            "region=north",
            &Cursor {
                after: "a".into(),
                offset: 1,
            },
        );
        // Another scope (other filters).
        assert!(refused(tokens.decode("page_token", "region=south", &token)));
        // Another key.
        assert!(refused(PageTokens::new(b"other").decode(
            "page_token",
            "region=north",
            &token
        )));
        // An edited payload with the old signature.
        let (_, tag) = token.split_once('.').expect("dot");
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(br#"{"after":"a","offset":0}"#)
        );
        assert!(refused(tokens.decode(
            "page_token",
            "region=north",
            &forged
        )));
        for garbage in ["x", "a.b", "....", "%%%.%%%"] {
            assert!(
                refused(tokens.decode("page_token", "region=north", garbage)),
                "{garbage}"
            );
        }
    }
}
