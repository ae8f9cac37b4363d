//! Page-token decoding (`relay_runtime::paging::PageTokens::decode`): a token this server did
//! not sign is always refused with INVALID_PAGE_TOKEN (never a panic, never a cursor), and a
//! cursor it signed comes back exactly, for its own scope only.

use arbitrary::{Arbitrary, Unstructured};
use relay_runtime::{error::ApiError, paging::PageTokens};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    token: &'a str,
    scope: &'a str,
    cursor: (i64, String, Option<f64>),
    flip: usize,
}

fn refused<T>(result: Result<Option<T>, ApiError>) -> bool {
    matches!(result, Err(ApiError::InvalidArgument { .. }))
}

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let tokens = PageTokens::new(b"fuzz page-token secret");
    // Arbitrary text: only the empty token is accepted (as the first page).
    let decoded = tokens.decode::<serde_json::Value>("page_token", input.scope, input.token);
    if input.token.is_empty() {
        assert!(matches!(decoded, Ok(None)));
    } else {
        assert!(
            refused(decoded),
            "a forged token was accepted: {:?}",
            input.token
        );
    }
    // A token it issued round-trips, in its scope only.
    let token = tokens.encode(input.scope, &input.cursor);
    let back: Option<(i64, String, Option<f64>)> = tokens
        .decode("page_token", input.scope, &token)
        .expect("an issued token decodes");
    let back = back.expect("an issued token is not empty");
    assert_eq!(back.0, input.cursor.0);
    assert_eq!(back.1, input.cursor.1);
    // JSON has no NaN or infinity: serde_json writes them as null.
    let expected = input.cursor.2.filter(|f| f.is_finite()).map(f64::to_bits);
    assert_eq!(
        back.2.map(f64::to_bits),
        expected,
        "a float cursor came back changed"
    );
    let other_scope = format!("{}x", input.scope);
    assert!(refused(tokens.decode::<serde_json::Value>(
        "page_token",
        &other_scope,
        &token
    )));
    // Any edit of one character is refused (or, rarely, decodes to the same cursor when
    // base64's unused trailing bits change: never a different one).
    let mut bytes = token.into_bytes();
    let at = input.flip % bytes.len();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    if let Ok(edited) = String::from_utf8(bytes) {
        match tokens.decode::<(i64, String, Option<f64>)>("page_token", input.scope, &edited) {
            Ok(Some(cursor)) => assert_eq!((cursor.0, &cursor.1), (back.0, &back.1)),
            Ok(None) => panic!("an edited token read as the first page"),
            Err(_) => {}
        }
    }
}
