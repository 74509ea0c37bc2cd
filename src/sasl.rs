//! SASL initial responses carrying an OAuth2 bearer token.
//!
//! - XOAUTH2 (Google, Microsoft): `user=<email>\x01auth=Bearer <token>\x01\x01`.
//! - OAUTHBEARER (RFC 7628): `n,a=<email>,\x01host=<host>\x01port=<port>\x01auth=Bearer <token>\x01\x01`.
//!
//! Both are returned base64-encoded and wrapped in [`Secret`]: they contain the access token.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::secret::Secret;

/// The base64 XOAUTH2 initial response.
pub fn xoauth2(user: &str, token: &Secret) -> Secret {
    let raw = format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose());
    Secret::new(STANDARD.encode(raw))
}

/// The base64 OAUTHBEARER initial response. `host`/`port` are the server the client connects to
/// (RFC 7628 §3.1); `None` leaves them out. A `,` or `=` in the user is escaped as the GS2 header
/// requires (`=2C`, `=3D`).
pub fn oauthbearer(user: &str, server: Option<(&str, u16)>, token: &Secret) -> Secret {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    let server = server.map_or(String::new(), |(host, port)| {
        format!("host={host}\x01port={port}\x01")
    });
    let raw = format!(
        "n,a={user},\x01{server}auth=Bearer {}\x01\x01",
        token.expose()
    );
    Secret::new(STANDARD.encode(raw))
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
}
