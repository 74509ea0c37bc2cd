//! "A valid access token for this account": the refresh protocol (ARCHITECTURE.md, "The token
//! lifecycle").
//!
//! 1. Read the store without a lock; a token valid for longer than the margin is used as is.
//! 2. Otherwise take the account's exclusive lock and **re-read**: if a peer refreshed while we
//!    waited, adopt its token (N processes starting together make one request).
//! 3. Otherwise refresh, persist the new grant (a rotated refresh token is written before the access
//!    token is handed out; a response without one keeps the old), release the lock.
//! 4. A refused refresh re-reads the store once: a peer outside our lock may have rotated the token.
//!
//! Transient failures never modify the grant; they are recorded for `auth status` only.

use std::time::Duration;

use anyhow::Result;

use super::{login_command, LastError, Refreshed, Refresher, StoredToken, TokenStore};
use crate::clock::Clock;
use crate::config::{Account, Grant};
use crate::error::{AuthError, TimedOut};
use crate::secret::Secret;

/// How long to wait for a peer's refresh beyond the account's request timeout (file I/O, start-up).
const LOCK_SLACK: Duration = Duration::from_secs(15);
/// A peer's freshly refreshed token is adopted if it is valid for at least this long, even when that
/// is less than the refresh margin (a provider issuing short tokens would otherwise make every
/// waiting process refresh again).
const MIN_ADOPT: Duration = Duration::from_secs(10);
/// How long the token endpoint may answer with something that is not a token response (a proxy's
/// page, a 200 without `access_token`) before a refresh fails for good (exit 1) instead of
/// asking for a retry (75): cron would otherwise retry forever and nobody would be told.
const UNEXPECTED_FOR: Duration = Duration::from_secs(3600);
/// Lifetime assumed when a token response has no `expires_in` (RFC 6749 makes it optional; an hour
/// is what Google and Microsoft issue).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Whether `e` is (or was escalated from) a "not a token response" answer.
fn is_unexpected(e: &AuthError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<super::refresh::UnexpectedAnswer>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether to refresh a token that is still fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Refresh only when the token is within the refresh margin of expiry.
    IfNeeded,
    /// Refresh now (unless a peer refreshed while we waited for the lock).
    Force,
}

/// The token handed out, and how it was obtained.
#[derive(Debug)]
pub struct Obtained {
    /// The grant now in the store.
    pub token: StoredToken,
    /// `true` when this process made a refresh request.
    pub refreshed: bool,
}

/// Takes `account`'s refresh lock, waiting up to `wait` for a peer to release it.
///
/// # Errors
/// [`AuthError::Transient`] when the wait runs out; store errors.
pub async fn wait_for_lock<S: TokenStore>(
    store: &S,
    account: &str,
    wait: Duration,
) -> Result<S::Lock> {
    store.lock(account, wait).await?.ok_or_else(|| {
        AuthError::Transient {
            account: account.to_string(),
            reason: format!(
                "another mailpilot process has held the token lock for over {}",
                humantime::format_duration(wait)
            ),
            source: None,
        }
        .into()
    })
}

/// Hands out valid access tokens for one account.
pub struct TokenSource<'a, S: TokenStore> {
    account: &'a Account,
    store: &'a S,
    clock: &'a dyn Clock,
}

impl<'a, S: TokenStore> TokenSource<'a, S> {
    /// A source for `account` backed by `store`.
    pub fn new(account: &'a Account, store: &'a S, clock: &'a dyn Clock) -> Self {
        Self {
            account,
            store,
            clock,
        }
    }

    /// A valid access token, refreshing if needed (or if `fetch` is [`Fetch::Force`]).
    ///
    /// # Errors
    /// [`AuthError`] for refresh failures and a missing grant; store errors with their paths.
    pub async fn access_token(&self, fetch: Fetch) -> Result<Obtained> {
        let margin = self.account.refresh_margin;
        let first = self.load_for_use().await?;
        if let Some(token) = first.as_ref().filter(|_| fetch == Fetch::IfNeeded) {
            if token.fresh(self.clock.now(), margin) {
                return Ok(Obtained {
                    token: token.clone(),
                    refreshed: false,
                });
            }
        }
        let _lock = self.lock().await?;
        let current = self.load_for_use().await?;
        let now = self.clock.now();
        if let Some(token) = &current {
            let peer_refreshed = current != first && token.fresh(now, MIN_ADOPT);
            if peer_refreshed || (fetch == Fetch::IfNeeded && token.fresh(now, margin)) {
                tracing::debug!(account = %self.account.name, "adopted a token refreshed by another process");
                return Ok(Obtained {
                    token: token.clone(),
                    refreshed: false,
                });
            }
        }
        let token = match current {
            Some(current) if self.account.grant.needs_person() => {
                self.refresh_locked(current).await?
            }
            previous => self.app_token_locked(previous).await?,
        };
        Ok(Obtained {
            token,
            refreshed: true,
        })
    }

    /// A new app token (client credentials) while holding the lock, persisted; `previous` is the
    /// cached one, if any.
    async fn app_token_locked(&self, previous: Option<StoredToken>) -> Result<StoredToken> {
        let result = async {
            let refresher = Refresher::new(self.account, self.server().await?)?;
            let now = self.clock.now();
            if self.account.grant == Grant::ServiceAccount {
                return refresher.jwt_bearer(now).await;
            }
            let secret = self.client_secret()?;
            refresher.client_credentials(secret.as_ref(), now).await
        }
        .await;
        let result = result.map(|r| {
            let now = self.clock.now();
            self.merge(previous.as_ref(), Secret::new(""), r, now)
        });
        self.settle(result).await
    }

    /// Stores a new grant from a refresh token obtained elsewhere, after proving it with one refresh.
    /// Nothing is stored if the refresh fails.
    ///
    /// # Errors
    /// [`AuthError`] from the refresh, or a store error.
    pub async fn import(&self, refresh_token: Secret) -> Result<StoredToken> {
        let _lock = self.lock().await?;
        let refreshed = self.request(&refresh_token, None, None).await?;
        let now = self.clock.now();
        let token = self.merge(None, refresh_token, refreshed, now);
        self.store.save(&token).await?;
        self.clear_error().await;
        Ok(token)
    }

    /// Stores the grant a login produced (which must include a refresh token).
    ///
    /// # Errors
    /// No refresh token in the response, or a store error.
    pub async fn adopt_login(&self, tokens: Refreshed) -> Result<StoredToken> {
        let Some(refresh_token) = tokens.refresh_token.clone().filter(|t| !t.is_empty()) else {
            return Err(AuthError::Failed {
                account: self.account.name.clone(),
                reason: "the provider issued no refresh token".into(),
                hint: Some(super::login::no_refresh_token_hint(self.account)),
                source: None,
            }
            .into());
        };
        let _lock = self.lock().await?;
        let token = self.merge(None, refresh_token, tokens, self.clock.now());
        self.store.save(&token).await?;
        self.clear_error().await;
        Ok(token)
    }

    /// The account's authorization server, its endpoints discovered from the issuer's metadata
    /// where the configuration leaves them out.
    ///
    /// # Errors
    /// As [`super::discovery::resolve`].
    pub async fn server(&self) -> Result<super::AuthServer, AuthError> {
        super::discovery::resolve(self.account, self.store, self.clock.now()).await
    }

    /// The client secret, resolved now (public clients have none); a command gets the account's
    /// `token_timeout`.
    ///
    /// # Errors
    /// [`AuthError::Transient`] when a secret command timed out, [`AuthError::Failed`] when the
    /// configured source cannot produce it.
    pub fn client_secret(&self) -> Result<Option<Secret>, AuthError> {
        let Some(source) = &self.account.client_secret else {
            return Ok(None);
        };
        let what = format!("client secret of account \"{}\"", self.account.name);
        source
            .resolve(&what, self.account.token_timeout)
            .map(Some)
            .map_err(|e| {
                let timed_out = e.chain().any(|c| c.is::<TimedOut>());
                let reason = "the client secret is unavailable".to_string();
                if timed_out {
                    AuthError::Transient {
                        account: self.account.name.clone(),
                        reason,
                        source: Some(e.into()),
                    }
                } else {
                    AuthError::Failed {
                        account: self.account.name.clone(),
                        reason,
                        hint: Some("check client_secret_env / client_secret_file / client_secret_cmd (`mailpilot config check`)".into()),
                        source: Some(e.into()),
                    }
                }
            })
    }

    /// The stored token; an app (client credentials) may have none yet, a person's grant must.
    async fn load_for_use(&self) -> Result<Option<StoredToken>> {
        match self.store.load(&self.account.name).await? {
            Some(token) => Ok(Some(token)),
            None if !self.account.grant.needs_person() => Ok(None),
            None => Err(AuthError::NeedsAuthorization {
                account: self.account.name.clone(),
                reason: "no token is stored for it".into(),
                hint: format!("run `{}`", login_command(&self.account.name)),
            }
            .into()),
        }
    }

    async fn lock(&self) -> Result<S::Lock> {
        wait_for_lock(
            self.store,
            &self.account.name,
            self.account.token_timeout + LOCK_SLACK,
        )
        .await
    }

    /// Refreshes `current` while holding the lock and persists the result.
    async fn refresh_locked(&self, current: StoredToken) -> Result<StoredToken> {
        let age = current.refresh_token_age(self.clock.now());
        let mut used = current.refresh_token.clone();
        let mut result = self
            .request(&used, current.scope.as_deref(), Some(age))
            .await;
        if let Err(AuthError::NeedsAuthorization { .. }) = &result {
            // A process that does not honour our lock (another host on a shared disk, an older
            // build) may have rotated the refresh token: give the newest one a single chance.
            if let Some(latest) = self.store.load(&self.account.name).await? {
                if latest.refresh_token != used {
                    tracing::info!(account = %self.account.name, "refresh token changed on disk; retrying once with it");
                    used = latest.refresh_token.clone();
                    result = self
                        .request(&used, current.scope.as_deref(), Some(age))
                        .await;
                }
            }
        }
        let result = result.map(|refreshed| {
            let now = self.clock.now();
            self.merge(Some(&current), used, refreshed, now)
        });
        self.settle(result).await
    }

    /// Persists a new grant (clearing the error record), or records why there is none.
    async fn settle(&self, result: Result<StoredToken, AuthError>) -> Result<StoredToken> {
        match result {
            Ok(token) => {
                self.store.save(&token).await?;
                self.clear_error().await;
                Ok(token)
            }
            Err(e) => {
                let (e, since) = self.escalate(e).await;
                self.record_error(&e, since).await;
                Err(e.into())
            }
        }
    }

    /// One refresh request; `granted` is the grant's scope as last reported.
    async fn request(
        &self,
        refresh_token: &Secret,
        granted: Option<&str>,
        age: Option<u64>,
    ) -> Result<Refreshed, AuthError> {
        let secret = self.client_secret()?;
        Refresher::new(self.account, self.server().await?)?
            .refresh(refresh_token, secret.as_ref(), granted, age)
            .await
    }

    /// The grant after a successful refresh: a rotated refresh token replaces the one used (and
    /// restarts its age); without one the used token stays.
    fn merge(
        &self,
        previous: Option<&StoredToken>,
        used: Secret,
        r: Refreshed,
        now: u64,
    ) -> StoredToken {
        let lifetime = r
            .expires_in
            .unwrap_or(DEFAULT_LIFETIME)
            .min(super::http::MAX_LIFETIME)
            .as_secs();
        let rotated = r.refresh_token.filter(|t| !t.is_empty());
        let kept_age = previous
            .filter(|p| p.refresh_token == used)
            .map(|p| p.obtained_at);
        let obtained_at = match (&rotated, kept_age) {
            (None, Some(at)) => at,
            _ => now,
        };
        StoredToken {
            account: self.account.name.clone(),
            access_token: r.access_token,
            expires_at: now.saturating_add(lifetime),
            refresh_token: rotated.unwrap_or(used),
            scope: r.scope.or_else(|| previous.and_then(|p| p.scope.clone())),
            obtained_at,
            refreshed_at: now,
        }
    }

    /// Turns a transient "not a token response" that has lasted [`UNEXPECTED_FOR`] into a
    /// failure; returns the error and, for such answers, when their streak began.
    async fn escalate(&self, e: AuthError) -> (AuthError, Option<u64>) {
        let unexpected = is_unexpected(&e);
        if !unexpected {
            return (e, None);
        }
        let now = self.clock.now();
        let since = match self.store.last_error(&self.account.name).await {
            Ok(Some(last)) if last.unexpected => last.since.unwrap_or(last.at),
            _ => now,
        };
        let lasted = now.saturating_sub(since);
        let AuthError::Transient {
            account,
            reason,
            source,
        } = e
        else {
            return (e, Some(since));
        };
        if lasted < UNEXPECTED_FOR.as_secs() {
            let e = AuthError::Transient {
                account,
                reason,
                source,
            };
            return (e, Some(since));
        }
        let failed = AuthError::Failed {
            account,
            reason: format!(
                "for {} the token endpoint has answered with something that is not a token response ({reason})",
                crate::clock::span(lasted)
            ),
            hint: Some(format!(
                "check token_url of account \"{}\" (`mailpilot config check`), and whether a proxy or captive portal answers instead of the provider",
                self.account.name
            )),
            source,
        };
        (failed, Some(since))
    }

    async fn record_error(&self, e: &AuthError, since: Option<u64>) {
        let record = LastError {
            at: self.clock.now(),
            kind: e.kind(),
            message: crate::error::error_text(e),
            since,
            unexpected: since.is_some(),
        };
        if let Err(err) = self
            .store
            .set_last_error(&self.account.name, Some(&record))
            .await
        {
            tracing::warn!(account = %self.account.name, error = %format!("{err:#}"), "could not record the refresh error");
        }
    }

    async fn clear_error(&self) {
        if let Err(err) = self.store.set_last_error(&self.account.name, None).await {
            tracing::warn!(account = %self.account.name, error = %format!("{err:#}"), "could not clear the refresh error record");
        }
    }
}
