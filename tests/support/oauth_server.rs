//! An in-process OAuth2 server for tests, on 127.0.0.1:0: the refresh grant (with optional
//! rotation), RFC 7662 introspection (for Dovecot), revocation, fault injection and request counters.
//!
//! Deliberately small and strict: refresh tokens are single-use when rotation is on, so a client that
//! refreshes twice with the same token gets `invalid_grant`, as from Microsoft.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// What the token endpoint does instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer with this status, content type and body.
    Http(u16, &'static str, &'static str),
    /// Read the request, wait this long, then close without answering (and without processing).
    Hang(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Read the request, then close the connection.
    Reset,
    /// 400 `invalid_grant` with a description.
    InvalidGrant,
    /// Answer with this status and JSON body.
    Json(u16, String),
    /// 200 with a JSON-looking body of this many bytes, streamed (a hostile or broken server).
    Huge(usize),
    /// Read the request and wait this long; then answer normally if the client is still there,
    /// else drop the request unprocessed (as a server that cancels abandoned requests does).
    Stall(Duration),
}

/// Per-user behaviour, so tests sharing one server (and one Dovecot) stay independent.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// How long this user's new access tokens really stay valid at introspection.
    pub real_lifetime: Option<u64>,
    /// `expires_in` of this user's new access tokens.
    pub expires_in: Option<u64>,
    /// Length of this user's new access tokens.
    pub token_len: Option<usize>,
    /// Introspection of this user's tokens fails with HTTP 500 (the mail server's token
    /// validation is down).
    pub introspection_down: bool,
    /// This user is a delegate of that (shared) mailbox: their tokens open it, as Exchange's
    /// FullAccess permission does.
    pub delegate_of: Option<String>,
}

/// A device authorization in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Waiting for the user.
    Pending,
    /// The user approved.
    Approved,
    /// The user said no.
    Denied,
    /// The code timed out.
    Expired,
}

#[derive(Debug, Clone)]
struct Device {
    user_code: String,
    scope: String,
    state: DeviceState,
    polls: u32,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    email: String,
    challenge: String,
    redirect_uri: String,
    scope: String,
    /// Whether a refresh token comes with the code (OpenID Connect Core §11).
    offline: bool,
}

#[derive(Debug, Clone)]
struct Grant {
    email: String,
    scope: String,
}

#[derive(Debug, Clone)]
struct Access {
    email: String,
    scope: String,
    expires_at: u64,
}

/// One request as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Decoded form fields.
    pub form: HashMap<String, String>,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Debug)]
struct State {
    grants: HashMap<String, Grant>,
    access: HashMap<String, Access>,
    client_id: String,
    client_secret: Option<String>,
    expires_in: u64,
    real_lifetime: Option<u64>,
    rotate: bool,
    fault: Fault,
    token_len: usize,
    refresh_requests: u64,
    /// Refresh grants answered with `invalid_grant` for an unknown (used or revoked) refresh
    /// token: a client reusing a rotated token.
    refused_refreshes: u64,
    introspections: u64,
    last_token_request: Option<Seen>,
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    policies: HashMap<String, Policy>,
    rt_owner: HashMap<String, String>,
    user_refreshes: HashMap<String, u64>,
    user_introspections: HashMap<String, u64>,
    login_user: String,
    deny_login: bool,
    granted_scope: Option<String>,
    codes: HashMap<String, CodeGrant>,
    devices: HashMap<String, Device>,
    authorize_requests: Vec<HashMap<String, String>>,
    revoked: Vec<String>,
    /// The `token_type_hint` of each accepted revocation.
    revoke_hints: Vec<String>,
    app_mailbox: Option<String>,
    /// Further app clients (client id → the mailbox their tokens open), sharing the secret, so
    /// tests using the shared stack's server do not step on each other.
    app_clients: HashMap<String, String>,
    /// Google-style service accounts: email → (public key, PKCS#1 DER; users it may act for).
    service_accounts: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// The app's registered public key (PKCS#1 DER), for `private_key_jwt` assertions.
    app_public_key: Option<Vec<u8>>,
    /// Assertion ids already used (a replay is refused).
    seen_jti: std::collections::HashSet<String>,
    /// The token endpoint's own URL (an assertion's `aud`).
    token_url: String,
    /// Assertions accepted so far.
    assertions: u64,
    /// OpenID Connect Core §11: `offline_access` counts only with `prompt=consent`.
    offline_needs_consent: bool,
    /// Refresh tokens only for `offline_access` (as most OpenID Connect servers).
    offline_only: bool,
    /// The `iss` the authorization response carries (RFC 9207); `None`: none.
    redirect_iss: Option<String>,
    /// The `issuer` the metadata document states.
    metadata_issuer: String,
    /// Metadata documents served.
    discovery_requests: u64,
    /// Whether `/.well-known/openid-configuration` exists (else only the RFC 8414 one).
    oidc_discovery: bool,
}

/// The running server; stops accepting when dropped.
pub struct OAuthServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A distinctive random-looking string (unique per process run), padded to `len`.
fn mint(prefix: &str, len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    let mut s = format!("{prefix}{n}x{:016x}", h.finish());
    while s.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(s.len());
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s.truncate(len.max(prefix.len() + 8));
    s
}

impl OAuthServer {
    /// Starts a server for client `test-client` with secret `test-secret`.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            grants: HashMap::new(),
            access: HashMap::new(),
            client_id: "test-client".into(),
            client_secret: Some("test-secret-5f3a9c".into()),
            expires_in: 3600,
            real_lifetime: None,
            rotate: false,
            fault: Fault::None,
            token_len: 48,
            refresh_requests: 0,
            introspections: 0,
            last_token_request: None,
            issued_access: Vec::new(),
            refused_refreshes: 0,
            issued_refresh: Vec::new(),
            policies: HashMap::new(),
            rt_owner: HashMap::new(),
            user_refreshes: HashMap::new(),
            user_introspections: HashMap::new(),
            login_user: "ops@example.com".into(),
            deny_login: false,
            granted_scope: None,
            codes: HashMap::new(),
            devices: HashMap::new(),
            authorize_requests: Vec::new(),
            revoked: Vec::new(),
            revoke_hints: Vec::new(),
            app_mailbox: None,
            app_clients: HashMap::new(),
            service_accounts: HashMap::new(),
            app_public_key: None,
            seen_jti: std::collections::HashSet::new(),
            token_url: format!("http://{addr}/token"),
            assertions: 0,
            offline_needs_consent: true,
            offline_only: false,
            redirect_iss: Some(format!("http://{addr}")),
            metadata_issuer: format!("http://{addr}"),
            discovery_requests: 0,
            oidc_discovery: true,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || handle(conn, &st));
            }
        });
        Self { addr, state, stop }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("oauth server state")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The RFC 7662 introspection endpoint.
    pub fn introspect_url(&self) -> String {
        format!("{}/introspect", self.base_url())
    }

    /// The client secret the server expects.
    pub fn client_secret(&self) -> String {
        self.st().client_secret.clone().unwrap_or_default()
    }

    /// Makes the client public (no secret expected).
    pub fn set_public_client(&self) {
        self.st().client_secret = None;
    }

    /// Creates a grant for `email` and returns its refresh token.
    pub fn issue_grant(&self, email: &str) -> String {
        let rt = mint("rt-", 40);
        let mut st = self.st();
        st.grants.insert(
            rt.clone(),
            Grant {
                email: email.into(),
                scope: "mail".into(),
            },
        );
        st.issued_refresh.push(rt.clone());
        st.rt_owner.insert(rt.clone(), email.into());
        rt
    }

    /// The authorization endpoint.
    pub fn auth_url(&self) -> String {
        format!("{}/authorize", self.base_url())
    }

    /// The device authorization endpoint.
    pub fn device_url(&self) -> String {
        format!("{}/device", self.base_url())
    }

    /// The revocation endpoint.
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// Adds an app client `client_id` (same secret) whose tokens open `mailbox`.
    pub fn add_app_client(&self, client_id: &str, mailbox: &str) {
        self.st()
            .app_clients
            .insert(client_id.to_string(), mailbox.to_string());
    }

    /// Registers a service account `email` (its public key, PKCS#1 DER) and the users it may act
    /// for (empty: no domain-wide delegation).
    pub fn add_service_account(&self, email: &str, public_key: Vec<u8>, users: &[&str]) {
        self.st().service_accounts.insert(
            email.to_string(),
            (public_key, users.iter().map(|u| u.to_string()).collect()),
        );
    }

    /// Registers the app's public key (PKCS#1 DER) for `private_key_jwt` assertions.
    pub fn set_app_public_key(&self, der: Vec<u8>) {
        self.st().app_public_key = Some(der);
    }

    /// How many client assertions were accepted.
    pub fn assertions(&self) -> u64 {
        self.st().assertions
    }

    /// Lets the client's app tokens (client credentials) open `email`'s mailbox; `None` refuses
    /// the grant (`unauthorized_client`).
    pub fn set_app_mailbox(&self, email: Option<&str>) {
        self.st().app_mailbox = email.map(str::to_string);
    }

    /// Who "signs in" in the browser or device flow, and whether they refuse.
    pub fn set_login(&self, email: &str, deny: bool) {
        let mut st = self.st();
        st.login_user = email.into();
        st.deny_login = deny;
    }

    /// Whether `offline_access` needs `prompt=consent` to bring a refresh token (default: yes,
    /// as OpenID Connect Core §11 says; Entra does not ask for it).
    pub fn set_offline_needs_consent(&self, on: bool) {
        self.st().offline_needs_consent = on;
    }

    /// Issue refresh tokens only to logins asking for `offline_access`.
    pub fn set_offline_only(&self) {
        self.st().offline_only = true;
    }

    /// The `iss` of authorization responses (default: this server's issuer; `None`: left out).
    pub fn set_redirect_iss(&self, iss: Option<&str>) {
        self.st().redirect_iss = iss.map(String::from);
    }

    /// The `issuer` the metadata states (default: the base URL, which is the issuer).
    pub fn set_metadata_issuer(&self, issuer: &str) {
        self.st().metadata_issuer = issuer.into();
    }

    /// Serve only RFC 8414's `/.well-known/oauth-authorization-server` (not OpenID's).
    pub fn set_oauth_metadata_only(&self) {
        self.st().oidc_discovery = false;
    }

    /// Metadata documents served so far.
    pub fn discovery_requests(&self) -> u64 {
        self.st().discovery_requests
    }

    /// Grant this scope instead of the one requested (a user unticking a permission).
    pub fn set_granted_scope(&self, scope: Option<&str>) {
        self.st().granted_scope = scope.map(String::from);
    }

    /// The query parameters of every authorization request so far.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.st().authorize_requests.clone()
    }

    /// Resolves the device authorization with this user code.
    pub fn set_device(&self, user_code: &str, state: DeviceState) {
        let mut st = self.st();
        for d in st.devices.values_mut().filter(|d| d.user_code == user_code) {
            d.state = state;
        }
    }

    /// Device token polls so far.
    pub fn device_polls(&self) -> u32 {
        self.st().devices.values().map(|d| d.polls).sum()
    }

    /// The `token_type_hint` of each accepted revocation.
    pub fn revoke_hints(&self) -> Vec<String> {
        self.st().revoke_hints.clone()
    }

    /// Tokens revoked through the revocation endpoint.
    pub fn revoked(&self) -> Vec<String> {
        self.st().revoked.clone()
    }

    /// Sets the behaviour for one user.
    pub fn set_policy(&self, email: &str, policy: Policy) {
        self.st().policies.insert(email.into(), policy);
    }

    /// Revokes one user's grants and access tokens.
    pub fn revoke_user(&self, email: &str) {
        let mut st = self.st();
        st.grants.retain(|_, g| g.email != email);
        st.access.retain(|_, a| a.email != email);
    }

    /// Token endpoint requests presenting one of this user's refresh tokens.
    pub fn refresh_count_for(&self, email: &str) -> u64 {
        self.st().user_refreshes.get(email).copied().unwrap_or(0)
    }

    /// Introspection requests for this user's tokens.
    pub fn introspection_count_for(&self, email: &str) -> u64 {
        self.st()
            .user_introspections
            .get(email)
            .copied()
            .unwrap_or(0)
    }

    /// The newest access token issued to `email`.
    pub fn last_access_token_for(&self, email: &str) -> Option<String> {
        let st = self.st();
        st.issued_access
            .iter()
            .rev()
            .find(|t| st.access.get(*t).is_some_and(|a| a.email == email))
            .cloned()
    }

    /// Revokes every grant and access token (as a user removing the app's access would).
    pub fn revoke_all(&self) {
        let mut st = self.st();
        st.grants.clear();
        st.access.clear();
    }

    /// `expires_in` of new access tokens.
    pub fn set_expires_in(&self, secs: u64) {
        self.st().expires_in = secs;
    }

    /// How long new access tokens really stay valid at introspection (default: `expires_in`).
    pub fn set_real_lifetime(&self, secs: Option<u64>) {
        self.st().real_lifetime = secs;
    }

    /// Whether each refresh returns a new refresh token and invalidates the old one.
    pub fn set_rotation(&self, on: bool) {
        self.st().rotate = on;
    }

    /// Length of new access tokens.
    pub fn set_token_len(&self, len: usize) {
        self.st().token_len = len;
    }

    /// Fault mode of the token endpoint.
    pub fn set_fault(&self, fault: Fault) {
        self.st().fault = fault;
    }

    /// Refresh requests refused for an unknown refresh token (a rotated one reused).
    pub fn refused_refreshes(&self) -> u64 {
        self.st().refused_refreshes
    }

    /// How many access tokens were issued so far (every grant kind).
    pub fn issued_count(&self) -> usize {
        self.st().issued_access.len()
    }

    /// Requests to the token endpoint so far (including failed ones).
    pub fn refresh_count(&self) -> u64 {
        self.st().refresh_requests
    }

    /// Introspection requests so far.
    pub fn introspection_count(&self) -> u64 {
        self.st().introspections
    }

    /// The last token request.
    pub fn last_token_request(&self) -> Option<Seen> {
        self.st().last_token_request.clone()
    }

    /// The refresh tokens that are valid now.
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.st().grants.keys().cloned().collect()
    }

    /// Every access and refresh token ever issued, plus the client secret (for leak checks).
    pub fn all_secrets(&self) -> Vec<String> {
        let st = self.st();
        let mut v: Vec<String> = st
            .issued_access
            .iter()
            .chain(&st.issued_refresh)
            .cloned()
            .collect();
        v.extend(st.client_secret.clone());
        v
    }

    /// The newest access token issued.
    pub fn last_access_token(&self) -> Option<String> {
        self.st().issued_access.last().cloned()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body,
    })
}

fn respond(mut conn: &TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn respond_huge(mut conn: &TcpStream, size: usize) {
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"access_token\":\"",
        size
    );
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = "{\"access_token\":\"".len();
    while sent < size {
        let n = chunk.len().min(size - sent);
        if conn.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent += n;
    }
    let _ = conn.flush();
}

fn json(conn: &TcpStream, status: u16, value: serde_json::Value) {
    respond(conn, status, "application/json", &value.to_string());
}

fn handle(conn: TcpStream, state: &Mutex<State>) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&req.body).into_owned().collect();
    let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
    match path {
        "/token" => token(&conn, state, &req, form),
        "/introspect" => introspect(&conn, state, &form),
        "/authorize" => authorize(
            &conn,
            state,
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ),
        "/device" => device(&conn, state, &form),
        "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
            metadata(&conn, state, path)
        }
        "/revoke" => {
            let mut st = state.lock().expect("state");
            // RFC 7009 §2.1: the client authenticates as it does at the token endpoint.
            if let Err(e) = check_client(&st, &req, &form) {
                return json(
                    &conn,
                    401,
                    serde_json::json!({"error": "invalid_client", "error_description": e}),
                );
            }
            st.revoke_hints
                .push(form.get("token_type_hint").cloned().unwrap_or_default());
            let token = form.get("token").cloned().unwrap_or_default();
            st.grants.remove(&token);
            st.access.remove(&token);
            st.revoked.push(token);
            respond(&conn, 200, "text/plain", "")
        }
        _ => respond(&conn, 404, "text/plain", "not found"),
    }
}

/// The authorization server's metadata (OpenID Connect Discovery 1.0 / RFC 8414).
fn metadata(conn: &TcpStream, state: &Mutex<State>, path: &str) {
    let mut st = state.lock().expect("state");
    if path.contains("openid") && !st.oidc_discovery {
        return respond(conn, 404, "text/plain", "not found");
    }
    st.discovery_requests += 1;
    let base = st.token_url.trim_end_matches("/token").to_string();
    json(
        conn,
        200,
        serde_json::json!({
            "issuer": st.metadata_issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "device_authorization_endpoint": format!("{base}/device"),
            "revocation_endpoint": format!("{base}/revoke"),
            "introspection_endpoint": format!("{base}/introspect"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "offline_access", "mail", "smtp"],
            "authorization_response_iss_parameter_supported": true,
        }),
    );
}

fn redirect(mut conn: &TcpStream, location: &str) {
    let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The user's browser at the authorization endpoint: signs in as the configured user at once.
fn authorize(conn: &TcpStream, state: &Mutex<State>, q: HashMap<String, String>) {
    let mut st = state.lock().expect("state");
    st.authorize_requests.push(q.clone());
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let st_param = q.get("state").cloned().unwrap_or_default();
    if st.deny_login {
        let loc = format!("{redirect_uri}{sep}error=access_denied&error_description=The+user+denied+access&state={st_param}");
        return redirect(conn, &loc);
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("client_id") != Some(&st.client_id)
    {
        return respond(
            conn,
            400,
            "text/plain",
            "PKCE S256 and the client id are required",
        );
    }
    let code = mint("code-", 24);
    let email = st.login_user.clone();
    let scope = q.get("scope").cloned().unwrap_or_default();
    let asks_offline = scope.split(' ').any(|s| s == "offline_access");
    let consent = q
        .get("prompt")
        .is_some_and(|p| p.split(' ').any(|p| p == "consent"));
    // Plain OAuth2 clients get refresh tokens (unless `offline_only`); offline_access is
    // honoured only with consent.
    let offline = if asks_offline {
        consent || !st.offline_needs_consent
    } else {
        !st.offline_only
    };
    st.codes.insert(
        code.clone(),
        CodeGrant {
            email,
            challenge: q.get("code_challenge").cloned().unwrap_or_default(),
            redirect_uri: redirect_uri.clone(),
            scope,
            offline,
        },
    );
    let iss = st.redirect_iss.as_ref().map_or(String::new(), |i| {
        format!(
            "&iss={}",
            form_urlencoded::byte_serialize(i.as_bytes()).collect::<String>()
        )
    });
    redirect(
        conn,
        &format!("{redirect_uri}{sep}code={code}&state={st_param}{iss}"),
    );
}

/// RFC 8628 device authorization.
fn device(conn: &TcpStream, state: &Mutex<State>, form: &HashMap<String, String>) {
    let mut st = state.lock().expect("state");
    let device_code = mint("dev-", 24);
    let user_code = format!("WDJB-{:04}", st.devices.len() + 1);
    st.devices.insert(
        device_code.clone(),
        Device {
            user_code: user_code.clone(),
            scope: form.get("scope").cloned().unwrap_or_default(),
            state: DeviceState::Pending,
            polls: 0,
        },
    );
    json(
        conn,
        200,
        serde_json::json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": "https://login.example.test/device",
            "expires_in": 600,
            "interval": 1,
        }),
    );
}

/// Issues an access token, and a refresh token when `offline`, for `email` (a login).
fn issue(st: &mut State, email: &str, requested_scope: &str, offline: bool) -> serde_json::Value {
    let scope = st
        .granted_scope
        .clone()
        .unwrap_or_else(|| requested_scope.to_string());
    let rt = mint("rt-", 40);
    st.grants.insert(
        rt.clone(),
        Grant {
            email: email.into(),
            scope: scope.clone(),
        },
    );
    st.issued_refresh.push(rt.clone());
    st.rt_owner.insert(rt.clone(), email.into());
    let (access, expires_in) = mint_access(st, "at-", email, &scope);
    if !offline {
        st.grants.remove(&rt);
        return serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": scope});
    }
    serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": rt, "scope": scope})
}

/// A new access token (`prefix…`) for `email`'s mailbox, remembered for introspection; returns it
/// and its lifetime.
fn mint_access(st: &mut State, prefix: &str, email: &str, scope: &str) -> (String, u64) {
    let access = mint(prefix, st.token_len);
    let expires_in = st.expires_in;
    st.access.insert(
        access.clone(),
        Access {
            email: email.into(),
            scope: scope.into(),
            expires_at: now() + expires_in,
        },
    );
    st.issued_access.push(access.clone());
    (access, expires_in)
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) == challenge
}

/// The authorization_code and device_code grants; `None` when the request is another grant.
fn login_grant(
    st: &mut State,
    form: &HashMap<String, String>,
    client: &str,
) -> Option<(u16, serde_json::Value)> {
    let err = |code: &str, desc: &str| {
        (
            400,
            serde_json::json!({"error": code, "error_description": desc}),
        )
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = st.codes.remove(&code) else {
                return Some(err("invalid_grant", "unknown or used authorization code"));
            };
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return Some(err("invalid_grant", "redirect_uri does not match"));
            }
            if !pkce_ok(
                form.get("code_verifier").map_or("", String::as_str),
                &grant.challenge,
            ) {
                return Some(err("invalid_grant", "PKCE verification failed"));
            }
            Some((200, issue(st, &grant.email, &grant.scope, grant.offline)))
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            let code = form.get("device_code").cloned().unwrap_or_default();
            let email = st.login_user.clone();
            let Some(device) = st.devices.get_mut(&code) else {
                return Some(err("invalid_grant", "unknown device code"));
            };
            device.polls += 1;
            let (state, scope, polls) = (device.state, device.scope.clone(), device.polls);
            Some(match state {
                DeviceState::Pending if polls == 2 => err("slow_down", "poll less often"),
                DeviceState::Pending => err("authorization_pending", "waiting for the user"),
                DeviceState::Denied => err("access_denied", "the user declined"),
                DeviceState::Expired => err("expired_token", "the device code expired"),
                DeviceState::Approved => {
                    // Single use: a second poll with this code is an error.
                    if let Some(d) = st.devices.get_mut(&code) {
                        d.state = DeviceState::Expired;
                    }
                    (200, issue(st, &email, &scope, true))
                }
            })
        }
        Some(JWT_BEARER) => Some(jwt_bearer_grant(st, form)),
        Some("client_credentials") => {
            let scope = form.get("scope").cloned().unwrap_or_default();
            let mailbox = st
                .app_clients
                .get(client)
                .cloned()
                .or_else(|| st.app_mailbox.clone());
            Some(match mailbox {
                Some(email) => (200, issue_app(st, &email, &scope)),
                None => err(
                    "unauthorized_client",
                    "the client has no application permission for any mailbox",
                ),
            })
        }
        _ => None,
    }
}

/// A compact JWT as a server reads it: header, claims, and what the signature covers.
struct Jwt {
    header: serde_json::Value,
    claims: serde_json::Value,
    signed: String,
    signature: Vec<u8>,
}

impl Jwt {
    /// `header.claims.signature`, each part base64url JSON; `None` when it is not that shape.
    fn parse(text: &str) -> Option<Jwt> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let [header, claims, signature] = text.split('.').collect::<Vec<_>>()[..] else {
            return None;
        };
        let json = |p: &str| {
            serde_json::from_slice::<serde_json::Value>(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
        };
        Some(Jwt {
            header: json(header)?,
            claims: json(claims)?,
            signed: format!("{header}.{claims}"),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    /// Whether it carries an RS256 signature by the RSA key `public` (PKCS#1 DER).
    fn signed_by(&self, public: Vec<u8>) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        )
        .verify(self.signed.as_bytes(), &self.signature)
        .is_ok()
    }
}

/// RFC 7523 §2.1.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A service account's JWT bearer grant, as Google checks it: the signature against the
/// account's key (`invalid_grant` "Invalid JWT Signature."), `aud` the token endpoint, `sub` among
/// the users it was delegated (`unauthorized_client` without delegation, `invalid_grant` for an
/// unknown user).
fn jwt_bearer_grant(st: &mut State, form: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let err = |code: &str, desc: &str| {
        (
            400,
            serde_json::json!({"error": code, "error_description": desc}),
        )
    };
    let Some(jwt) = Jwt::parse(form.get("assertion").map_or("", String::as_str)) else {
        return err("invalid_grant", "Invalid JWT: not three parts.");
    };
    let claims = &jwt.claims;
    let issuer = claims["iss"].as_str().unwrap_or_default().to_string();
    let Some((key, delegated)) = st.service_accounts.get(&issuer).cloned() else {
        return err("invalid_grant", "Invalid JWT Signature.");
    };
    if !jwt.signed_by(key) {
        return err("invalid_grant", "Invalid JWT Signature.");
    }
    if claims["aud"] != st.token_url.as_str() || claims["exp"].as_u64().is_none_or(|e| e <= now()) {
        return err("invalid_grant", "Invalid JWT: aud or exp.");
    }
    if delegated.is_empty() {
        return (
            401,
            serde_json::json!({"error": "unauthorized_client", "error_description": "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested."}),
        );
    }
    let user = claims["sub"].as_str().unwrap_or_default().to_string();
    if !delegated.contains(&user) {
        return err("invalid_grant", "Invalid email or User ID");
    }
    let scope = claims["scope"].as_str().unwrap_or_default().to_string();
    (200, issue_app(st, &user, &scope))
}

/// An app token (client credentials): valid for `email`'s mailbox, no refresh token.
fn issue_app(st: &mut State, email: &str, scope: &str) -> serde_json::Value {
    let (access, expires_in) = mint_access(st, "at-app-", email, scope);
    serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in})
}

fn introspect(conn: &TcpStream, state: &Mutex<State>, form: &HashMap<String, String>) {
    let mut st = state.lock().expect("state");
    st.introspections += 1;
    let token = form.get("token").cloned().unwrap_or_default();
    if let Some(email) = st.access.get(&token).map(|a| a.email.clone()) {
        *st.user_introspections.entry(email.clone()).or_default() += 1;
        if st
            .policies
            .get(&email)
            .is_some_and(|p| p.introspection_down)
        {
            return respond(conn, 500, "text/plain", "introspection backend down");
        }
    }
    match st.access.get(&token) {
        Some(a) if a.expires_at > now() => {
            let opens = st
                .policies
                .get(&a.email)
                .and_then(|p| p.delegate_of.clone())
                .unwrap_or_else(|| a.email.clone());
            json(
                conn,
                200,
                serde_json::json!({"active": true, "username": opens, "scope": a.scope, "exp": a.expires_at}),
            )
        }
        _ => json(conn, 200, serde_json::json!({"active": false})),
    }
}

fn token(conn: &TcpStream, state: &Mutex<State>, req: &Request, form: HashMap<String, String>) {
    let fault = {
        let mut st = state.lock().expect("state");
        st.refresh_requests += 1;
        let owner = form
            .get("refresh_token")
            .and_then(|rt| st.rt_owner.get(rt))
            .cloned();
        if let Some(email) = owner {
            *st.user_refreshes.entry(email).or_default() += 1;
        }
        st.last_token_request = Some(Seen {
            form: form.clone(),
            authorization: req.headers.get("authorization").cloned(),
        });
        st.fault.clone()
    };
    match fault {
        Fault::None => {}
        Fault::Http(status, ct, body) => return respond(conn, status, ct, body),
        Fault::Hang(d) => return thread::sleep(d),
        Fault::Stall(d) => {
            thread::sleep(d);
            let _ = conn.set_nonblocking(true);
            let mut probe = [0u8; 1];
            let gone = match conn.peek(&mut probe) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let _ = conn.set_nonblocking(false);
            if gone {
                return;
            }
        }
        Fault::Garbage => return respond(conn, 200, "application/json", "<html>this is not json"),
        Fault::Reset => return,
        Fault::Json(status, body) => return respond(conn, status, "application/json", &body),
        Fault::Huge(size) => return respond_huge(conn, size),
        Fault::InvalidGrant => {
            return json(
                conn,
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
            )
        }
    }
    let mut st = state.lock().expect("state");
    let checked = if form.contains_key("client_assertion") {
        check_assertion(&mut st, &form).map(|()| st.client_id.clone())
    } else if form.get("grant_type").map(String::as_str) == Some(JWT_BEARER) {
        // The grant itself is the signed proof (checked below); no client authenticates.
        Ok(String::new())
    } else {
        check_client(&st, req, &form)
    };
    let client = checked.clone().unwrap_or_default();
    if let Err(e) = checked {
        return json(
            conn,
            401,
            serde_json::json!({"error": "invalid_client", "error_description": e}),
        );
    }
    if let Some((status, body)) = login_grant(&mut st, &form, &client) {
        drop(st);
        return json(conn, status, body);
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json(
            conn,
            400,
            serde_json::json!({"error": "unsupported_grant_type"}),
        );
    }
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    let Some(grant) = st.grants.get(&rt).cloned() else {
        st.refused_refreshes += 1;
        return json(
            conn,
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        );
    };
    // RFC 6749 §6: a refresh may not ask for a scope the grant does not hold.
    if let Some(asked) = form.get("scope") {
        let held: Vec<&str> = grant.scope.split(' ').collect();
        if let Some(extra) = asked.split(' ').find(|s| !held.contains(s)) {
            return json(
                conn,
                400,
                serde_json::json!({"error": "invalid_scope", "error_description": format!("scope {extra} was not granted")}),
            );
        }
    }
    let policy = st.policies.get(&grant.email).cloned().unwrap_or_default();
    let access = mint("at-", policy.token_len.unwrap_or(st.token_len));
    let expires_in = policy.expires_in.unwrap_or(st.expires_in);
    let lifetime = policy
        .real_lifetime
        .or(st.real_lifetime)
        .unwrap_or(expires_in);
    st.access.insert(
        access.clone(),
        Access {
            email: grant.email.clone(),
            scope: grant.scope.clone(),
            expires_at: now() + lifetime,
        },
    );
    st.issued_access.push(access.clone());
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": grant.scope,
    });
    if st.rotate {
        let new_rt = mint("rt-", 40);
        st.grants.remove(&rt);
        let grant_email = grant.email.clone();
        st.grants.insert(new_rt.clone(), grant);
        st.issued_refresh.push(new_rt.clone());
        st.rt_owner.insert(new_rt.clone(), grant_email.clone());
        body["refresh_token"] = serde_json::Value::String(new_rt);
    }
    drop(st);
    json(conn, 200, body);
}

/// A `private_key_jwt` client assertion (RFC 7523 §2.2): RS256 over the registered key, `aud` the
/// token endpoint, `iss` = `sub` = the client, not expired, `jti` never seen before.
fn check_assertion(st: &mut State, form: &HashMap<String, String>) -> Result<(), String> {
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("unsupported client_assertion_type".into());
    }
    let jwt = Jwt::parse(form.get("client_assertion").map_or("", String::as_str))
        .ok_or("the assertion is not a JWT")?;
    let claims = &jwt.claims;
    if jwt.header["alg"] != "RS256" || jwt.header["x5t"].as_str().is_none() {
        return Err("the assertion header needs alg RS256 and x5t".into());
    }
    let key = st
        .app_public_key
        .clone()
        .ok_or("no certificate is registered for the client")?;
    if !jwt.signed_by(key) {
        return Err("AADSTS700027: Client assertion failed signature validation.".into());
    }
    if claims["aud"] != st.token_url.as_str() {
        return Err(format!("wrong aud {}", claims["aud"]));
    }
    if claims["iss"] != st.client_id.as_str() || claims["sub"] != st.client_id.as_str() {
        return Err("iss and sub must be the client id".into());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now()) {
        return Err("the assertion has expired".into());
    }
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    if jti.is_empty() || !st.seen_jti.insert(jti) {
        return Err("the assertion was used before (jti replayed)".into());
    }
    st.assertions += 1;
    Ok(())
}

/// The client authenticated by id and secret (Basic or in the body); returns its id.
fn check_client(
    st: &State,
    req: &Request,
    form: &HashMap<String, String>,
) -> Result<String, String> {
    let (id, secret) = match req
        .headers
        .get("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
    {
        Some(b64) => {
            let raw = String::from_utf8(STANDARD.decode(b64).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let (id, secret) = raw.split_once(':').ok_or("bad basic auth")?;
            let dec = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (dec(id), Some(dec(secret)))
        }
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned(),
        ),
    };
    if id != st.client_id && !st.app_clients.contains_key(&id) {
        return Err(format!("unknown client {id:?}"));
    }
    match (&st.client_secret, secret) {
        (Some(want), Some(got)) if *want == got => Ok(id),
        (None, None) => Ok(id),
        (None, Some(s)) if s.is_empty() => Ok(id),
        _ => Err("client authentication failed".into()),
    }
}
