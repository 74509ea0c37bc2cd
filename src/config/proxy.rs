//! `proxy = "http://host:3128"`, `"socks5://host:1080"` or `"socks5h://user:pass@host:1080"`: the
//! proxy an account's connections go through (the OAuth endpoints, SMTP and IMAP). Its password
//! is a [`Secret`]: shown nowhere, not even in `config check`.

use std::fmt;

use crate::secret::Secret;

/// How the proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP `CONNECT` (RFC 9110 §9.3.6).
    Http,
    /// SOCKS5 (RFC 1928); host names are resolved here.
    Socks5,
    /// SOCKS5 with host names resolved by the proxy.
    Socks5h,
}

impl ProxyKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }
}

/// A proxy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The protocol.
    pub kind: ProxyKind,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name and password, when the proxy asks for them.
    pub credentials: Option<(String, Secret)>,
}

/// The longest user name or password SOCKS5 can carry (RFC 1929: one length byte).
const MAX_CREDENTIAL: usize = 255;

impl Proxy {
    /// Reads a proxy URL.
    ///
    /// # Errors
    /// What is wrong with it, for a config problem (the password is never repeated).
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text)
            .map_err(|e| format!("not a proxy URL ({e}); expected http://HOST:PORT, socks5://HOST:PORT or socks5h://HOST:PORT"))?;
        let kind = match url.scheme() {
            "http" => ProxyKind::Http,
            "socks5" => ProxyKind::Socks5,
            "socks5h" => ProxyKind::Socks5h,
            "https" => return Err("a TLS connection to the proxy itself (https://) is not supported: use http:// (the tunnelled connections are TLS end to end)".into()),
            other => return Err(format!("unsupported proxy scheme \"{other}\" (expected http, socks5 or socks5h)")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the proxy URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port()
            .ok_or("give the proxy's port (http://HOST:3128, socks5://HOST:1080)")?;
        if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
            return Err("a proxy URL has no path or query".into());
        }
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                "the proxy credentials are not valid percent-encoded UTF-8".to_string()
            })
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => {
                let user = decode(user)?;
                let password = decode(password.unwrap_or(""))?;
                if user.len() > MAX_CREDENTIAL || password.len() > MAX_CREDENTIAL {
                    return Err(format!(
                        "proxy user names and passwords are at most {MAX_CREDENTIAL} bytes"
                    ));
                }
                Some((user, Secret::new(password)))
            }
        };
        Ok(Proxy {
            kind,
            host,
            port,
            credentials,
        })
    }

    /// The whole URL, credentials included, for the HTTP client.
    pub fn url(&self) -> Secret {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let auth = match &self.credentials {
            Some((user, password)) => format!("{}:{}@", encode(user), encode(password.expose())),
            None => String::new(),
        };
        Secret::new(format!(
            "{}://{auth}{host}:{}",
            self.kind.scheme(),
            self.port
        ))
    }
}

/// `scheme://[user@]host:port`, never the password.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = match &self.credentials {
            Some((user, _)) => format!("{user}:***@"),
            None => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{user}{host}:{}", self.kind.scheme(), self.port)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinds, hosts, ports and credentials are read; the password shows nowhere but `url()`.
    #[test]
    fn parses_and_redacts() {
        let p = Proxy::parse("socks5h://ops:p%40ss+w@proxy.example:1080").expect("valid");
        assert_eq!(p.kind, ProxyKind::Socks5h);
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 1080));
        let (user, password) = p.credentials.clone().expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("ops", "p@ss+w"));
        assert_eq!(p.to_string(), "socks5h://ops:***@proxy.example:1080");
        assert!(!format!("{p:?}").contains("p@ss"));
        assert_eq!(Proxy::parse(p.url().expose()).expect("round trip"), p);
        let v6 = Proxy::parse("http://[::1]:3128").expect("v6");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "http://[::1]:3128");
        for bad in [
            "https://p:443",
            "ftp://p:21",
            "http://p",
            "p:3128",
            "http://p:3128/x",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }
}
