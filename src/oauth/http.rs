//! HTTP to an account's OAuth endpoints, the one way mailpilot makes such requests: no redirects (a
//! token endpoint never redirects, and following one would resend the secret), the account's
//! timeout for the whole exchange, an answer of at most [`MAX_BODY`] bytes, its HTTP status kept
//! (the `oauth2` crate drops it), and a token answer's `expires_in` read leniently and bounded
//! ([`normalize`]) before anything else sees it. Never touches files.

use std::sync::Mutex;
use std::time::Duration;

use oauth2::{HttpClientError, HttpRequest, HttpResponse};

use crate::config::Account;
use crate::error::AuthError;

/// The largest answer read from an OAuth endpoint. Token answers are a few KB; more is a broken or
/// hostile server, and reading it whole would let it fill memory.
pub const MAX_BODY: usize = 1024 * 1024;

/// The longest access-token lifetime believed. Servers that mean "never expires" send numbers like
/// 999999999999; mailpilot then refreshes once a year, which costs nothing.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The HTTP client of an account's OAuth endpoints, remembering the status of its last answer.
pub struct Endpoint {
    http: reqwest::Client,
    status: Mutex<Option<u16>>,
}

/// What a call fails with, as the `oauth2` crate expects it.
pub type CallError = HttpClientError<reqwest::Error>;

impl Endpoint {
    /// A client with the account's `token_timeout` for connecting and for the whole exchange,
    /// trusting what [`crate::trust`] says (with the account's `ca_file`), through the account's
    /// `proxy` — or, without one, the proxy `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` name (unless
    /// `NO_PROXY` exempts the host).
    ///
    /// # Errors
    /// [`AuthError::Failed`] when the TLS stack cannot be initialised or the `ca_file` is
    /// unusable.
    pub fn new(account: &Account) -> Result<Self, AuthError> {
        let failed = |reason: String, source: Option<crate::error::BoxError>| AuthError::Failed {
            account: account.name.clone(),
            reason,
            hint: None,
            source,
        };
        let tls = crate::trust::client_config(account.ca_file.as_deref())
            .map_err(|reason| failed(reason, None))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(account.token_timeout)
            .connect_timeout(account.token_timeout)
            .user_agent(concat!("mailpilot/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls((*tls).clone());
        if let Some(proxy) = &account.proxy {
            let proxy = reqwest::Proxy::all(proxy.url().expose())
                .map_err(|_| failed(format!("the proxy {proxy} is not usable"), None))?;
            builder = builder.proxy(proxy);
        }
        let http = builder
            .build()
            .map_err(|e| failed("failed to set up the HTTP client".into(), Some(Box::new(e))))?;
        Ok(Self {
            http,
            status: Mutex::new(None),
        })
    }

    /// The HTTP status of the last answer, if one came.
    pub fn last_status(&self) -> Option<u16> {
        self.status.lock().ok().and_then(|s| *s)
    }

    /// Sends `request` (built by the `oauth2` crate) and reads the bounded answer.
    ///
    /// # Errors
    /// The request cannot be sent, no answer came in time, or the answer is over [`MAX_BODY`].
    pub async fn call(&self, request: HttpRequest) -> Result<HttpResponse, CallError> {
        let request: reqwest::Request = request.try_into().map_err(Box::new)?;
        let mut response = self.http.execute(request).await.map_err(Box::new)?;
        if let Ok(mut status) = self.status.lock() {
            *status = Some(response.status().as_u16());
        }
        let mut builder = oauth2::http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Box::new)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpClientError::Other(format!(
                    "the answer is larger than {} KiB; not reading it",
                    MAX_BODY / 1024
                )));
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(normalize(body)).map_err(HttpClientError::Http)
    }

    /// GETs `url` (a JSON document) and returns the status and the (bounded) body.
    ///
    /// # Errors
    /// As [`Endpoint::call`].
    pub async fn get(&self, url: &str) -> Result<(u16, Vec<u8>), CallError> {
        let request = oauth2::http::Request::get(url)
            .header(oauth2::http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(HttpClientError::Http)?;
        let response = self.call(request).await?;
        Ok((response.status().as_u16(), response.into_body()))
    }

    /// POSTs `form` to `url` (with an `Authorization` header when given) and returns the status
    /// and the (bounded) body as text.
    ///
    /// # Errors
    /// As [`Endpoint::call`].
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        authorization: Option<&crate::secret::Secret>,
    ) -> Result<(u16, String), CallError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = oauth2::http::Request::post(url).header(
            oauth2::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        if let Some(value) = authorization {
            request = request.header(oauth2::http::header::AUTHORIZATION, value.expose());
        }
        let request = request
            .body(body.into_bytes())
            .map_err(HttpClientError::Http)?;
        let response = self.call(request).await?;
        let text = String::from_utf8_lossy(response.body()).into_owned();
        Ok((response.status().as_u16(), text))
    }
}

/// A request to `url` that got no answer: a refused TLS certificate is a failure no retry fixes
/// (exit 1, with the `ca_file` hint); anything else is transient, for `reason`.
pub fn unanswered(
    account: &Account,
    url: &str,
    reason: String,
    error: crate::error::BoxError,
) -> AuthError {
    match crate::trust::certificate_problem(error.as_ref()) {
        Some(problem) => untrusted(account, url, &problem, error),
        None => AuthError::Transient {
            account: account.name.clone(),
            reason,
            source: Some(error),
        },
    }
}

/// A refusal of `url`'s TLS certificate (`problem`, as rustls words it): no retry fixes that,
/// trusting the certificate's CA does.
fn untrusted(
    account: &Account,
    url: &str,
    problem: &str,
    error: crate::error::BoxError,
) -> AuthError {
    AuthError::Failed {
        account: account.name.clone(),
        reason: format!("the TLS certificate of {url} is not trusted ({problem})"),
        hint: Some(format!(
            "if a private CA or a TLS-inspecting proxy signed it, set ca_file = \"/path/to/ca.pem\" in [accounts.{}] or add the CA to the system trust store (update-ca-certificates)",
            account.name
        )),
        source: Some(error),
    }
}

/// The cause worth showing of a failed call (`oauth2`'s wrapper only says "client error").
pub fn cause(error: CallError) -> crate::error::BoxError {
    match error {
        HttpClientError::Reqwest(inner) => inner,
        other => Box::new(other),
    }
}

/// A token answer's `expires_in` as the `oauth2` crate can read it: a number given as a string
/// (`"3600"`, which some servers send) becomes that number, and a lifetime past
/// [`MAX_LIFETIME`] (or negative, or fractional) becomes [`MAX_LIFETIME`]. Anything else passes
/// through unchanged.
pub fn normalize(body: Vec<u8>) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(&body) else {
        return body;
    };
    let Some(given) = fields.get("expires_in") else {
        return body;
    };
    let max = MAX_LIFETIME.as_secs();
    let seconds = match given {
        serde_json::Value::Number(n) => n.as_u64().map(|s| s.min(max)),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok().map(|s| s.min(max)),
        _ => None,
    }
    .unwrap_or(max);
    if given.as_u64() == Some(seconds) {
        return body;
    }
    fields.insert("expires_in".into(), seconds.into());
    serde_json::to_vec(&fields).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expires_in(body: &str) -> serde_json::Value {
        let out: serde_json::Value =
            serde_json::from_slice(&normalize(body.as_bytes().to_vec())).expect("json");
        out["expires_in"].clone()
    }

    /// Strings become numbers; absurd lifetimes are capped; other answers pass unchanged.
    #[test]
    fn normalizes_expires_in() {
        assert_eq!(expires_in(r#"{"expires_in": 3599}"#), 3599);
        assert_eq!(expires_in(r#"{"expires_in": "3600"}"#), 3600);
        assert_eq!(
            expires_in(r#"{"expires_in": 999999999999}"#),
            MAX_LIFETIME.as_secs()
        );
        assert_eq!(expires_in(r#"{"expires_in": -5}"#), MAX_LIFETIME.as_secs());
        assert_eq!(
            expires_in(r#"{"expires_in": 1e300}"#),
            MAX_LIFETIME.as_secs()
        );
        assert_eq!(normalize(b"<html>".to_vec()), b"<html>");
        assert_eq!(normalize(br#"{"a":1}"#.to_vec()), br#"{"a":1}"#);
    }

    proptest::proptest! {
        /// Whatever the body, normalising never panics, and a JSON answer comes out with a sane
        /// `expires_in`.
        #[test]
        fn normalize_bounds_lifetimes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256), n in proptest::num::i64::ANY) {
            let _ = normalize(body);
            let json = format!(r#"{{"access_token":"a","expires_in":{n}}}"#);
            let out: serde_json::Value = serde_json::from_slice(&normalize(json.into_bytes())).expect("json");
            let e = out["expires_in"].as_u64().expect("a number");
            proptest::prop_assert!(e <= MAX_LIFETIME.as_secs());
        }
    }
}
