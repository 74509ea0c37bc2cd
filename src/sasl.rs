//! SASL initial responses carrying an OAuth2 bearer token.
//!
//! - XOAUTH2 (Google, Microsoft): `user=<email>\x01auth=Bearer <token>\x01\x01`.
//! - OAUTHBEARER (RFC 7628): `n,a=<email>,\x01host=<host>\x01port=<port>\x01auth=Bearer <token>\x01\x01`.
//!
//! Both are returned base64-encoded and wrapped in [`Secret`]: they contain the access token.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::Mechanism;
use crate::error::{clean, SERVER_TEXT_MAX};
use crate::secret::Secret;

/// The base64 initial response for `mechanism`.
pub fn initial_response(
    mechanism: Mechanism,
    user: &str,
    server: (&str, u16),
    token: &Secret,
) -> Secret {
    Secret::new(STANDARD.encode(initial_response_raw(mechanism, user, server, token).expose()))
}

/// The initial response before base64 (for clients that encode it themselves, like async-imap's
/// AUTHENTICATE).
pub fn initial_response_raw(
    mechanism: Mechanism,
    user: &str,
    server: (&str, u16),
    token: &Secret,
) -> Secret {
    match mechanism {
        Mechanism::Xoauth2 => xoauth2_raw(user, token),
        Mechanism::Oauthbearer => oauthbearer_raw(user, Some(server), token),
    }
}

/// What the client sends after a server's error challenge, so the server can finish with its
/// final failure reply: an empty line for XOAUTH2, `%x01` (base64 `AQ==`) for OAUTHBEARER
/// (RFC 7628 §3.2.3).
pub fn cancel_reply(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::Xoauth2 => "",
        Mechanism::Oauthbearer => "AQ==",
    }
}

/// [`cancel_reply`] before base64.
pub fn cancel_reply_raw(mechanism: Mechanism) -> &'static [u8] {
    match mechanism {
        Mechanism::Xoauth2 => b"",
        Mechanism::Oauthbearer => b"\x01",
    }
}

/// The most of one field of an error challenge that is kept.
const FIELD_MAX: usize = 200;

/// A server's reason for refusing a token: the base64 JSON error challenge (`334 <b64>` in SMTP,
/// `+ <b64>` in IMAP), e.g. `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `401`, `400`, `invalid_token`, ...
    pub status: Option<String>,
    /// Accepted schemes (`bearer`).
    pub schemes: Option<String>,
    /// Scope the server requires.
    pub scope: Option<String>,
    /// The decoded text when it was not the expected JSON.
    pub other: Option<String>,
}

impl Rejection {
    /// Decodes a challenge; `None` if it is not base64.
    pub fn decode(challenge: &str) -> Option<Rejection> {
        let bytes = STANDARD.decode(challenge.trim()).ok()?;
        Some(Rejection::parse(&bytes))
    }

    /// Reads an already base64-decoded challenge.
    pub fn parse(bytes: &[u8]) -> Rejection {
        let text = String::from_utf8_lossy(bytes).into_owned();
        // The server's words end up in messages: cleaned and cut.
        let field = |v: &serde_json::Value, k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => Some(clean(s, FIELD_MAX)),
            Some(other) if !other.is_null() => Some(clean(&other.to_string(), FIELD_MAX)),
            _ => None,
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.is_object() => Rejection {
                status: field(&v, "status"),
                schemes: field(&v, "schemes"),
                scope: field(&v, "scope"),
                other: None,
            },
            _ => Rejection {
                status: None,
                schemes: None,
                scope: None,
                other: Some(clean(&text, SERVER_TEXT_MAX)),
            },
        }
    }

    /// Whether the server says the token itself is bad (expired, revoked, unknown): then one
    /// forced refresh may help.
    pub fn token_invalid(&self) -> bool {
        matches!(self.status.as_deref(), Some("401" | "invalid_token"))
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = &self.status {
            let meaning = match s.as_str() {
                "401" | "invalid_token" => " (token invalid or expired)",
                "400" => " (bad request)",
                "403" | "insufficient_scope" => " (insufficient scope)",
                _ => "",
            };
            parts.push(format!("status {s}{meaning}"));
        }
        if let Some(s) = &self.schemes {
            parts.push(format!("schemes {s}"));
        }
        if let Some(s) = &self.scope {
            parts.push(format!("required scope {s}"));
        }
        if let Some(o) = &self.other {
            parts.push(format!("\"{}\"", o.escape_debug()));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The base64 XOAUTH2 initial response.
pub fn xoauth2(user: &str, token: &Secret) -> Secret {
    Secret::new(STANDARD.encode(xoauth2_raw(user, token).expose()))
}

fn xoauth2_raw(user: &str, token: &Secret) -> Secret {
    Secret::new(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

/// The base64 OAUTHBEARER initial response. `host`/`port` are the server the client connects to
/// (RFC 7628 §3.1); `None` leaves them out. A `,` or `=` in the user is escaped as the GS2 header
/// requires (`=2C`, `=3D`).
pub fn oauthbearer(user: &str, server: Option<(&str, u16)>, token: &Secret) -> Secret {
    Secret::new(STANDARD.encode(oauthbearer_raw(user, server, token).expose()))
}

fn oauthbearer_raw(user: &str, server: Option<(&str, u16)>, token: &Secret) -> Secret {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    let server = server.map_or(String::new(), |(host, port)| {
        format!("host={host}\x01port={port}\x01")
    });
    Secret::new(format!(
        "n,a={user},\x01{server}auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &Secret) -> String {
        String::from_utf8(STANDARD.decode(s.expose()).expect("base64")).expect("utf8")
    }

    /// XOAUTH2 matches Google's documented example byte for byte.
    #[test]
    fn xoauth2_bytes() {
        let s = xoauth2(
            "someuser@example.com",
            &Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        );
        assert_eq!(
            s.expose(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    /// Error challenges decode into their fields and a readable summary.
    #[test]
    fn rejection_decodes() {
        let r = Rejection::decode(
            "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0=",
        )
        .expect("b64");
        assert!(r.token_invalid());
        assert_eq!(
            r.to_string(),
            "status 401 (token invalid or expired), schemes bearer, required scope mail"
        );
        let r = Rejection::decode(&STANDARD.encode(r#"{"status":"invalid_token"}"#)).expect("b64");
        assert!(r.token_invalid());
        let r = Rejection::decode(&STANDARD.encode("nope")).expect("b64");
        assert!(!r.token_invalid());
        assert_eq!(r.to_string(), "\"nope\"");
        assert_eq!(Rejection::decode("***"), None);
        assert_eq!(cancel_reply(Mechanism::Oauthbearer), "AQ==");
        assert_eq!(
            STANDARD
                .decode(cancel_reply(Mechanism::Oauthbearer))
                .expect("b64"),
            [1]
        );
    }

    /// OAUTHBEARER matches RFC 7628's example layout, with GS2 escaping.
    #[test]
    fn oauthbearer_bytes() {
        let s = oauthbearer(
            "user@example.com",
            Some(("server.example.com", 143)),
            &Secret::new("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="),
        );
        assert_eq!(
            decode(&s),
            "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let s = oauthbearer("a,b=c@x", None, &Secret::new("t"));
        assert_eq!(decode(&s), "n,a=a=2Cb=3Dc@x,\x01auth=Bearer t\x01\x01");
    }

    proptest::proptest! {
        /// Any challenge decodes without panicking, and what it shows is clean.
        #[test]
        fn any_challenge_decodes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let r = Rejection::parse(&bytes);
            proptest::prop_assert!(!r.to_string().chars().any(|c| c.is_control() && c != '\\'));
            let _ = Rejection::decode(&String::from_utf8_lossy(&bytes));
        }

        /// The XOAUTH2 string carries exactly the user and the token.
        #[test]
        fn xoauth2_round_trips(user in "[a-z0-9.@]{1,40}", token in "[A-Za-z0-9._-]{1,200}") {
            let s = xoauth2(&user, &Secret::new(token.clone()));
            proptest::prop_assert_eq!(
                decode(&s),
                format!("user={user}\x01auth=Bearer {token}\x01\x01")
            );
        }
    }
}
