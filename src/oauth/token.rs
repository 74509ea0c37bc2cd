//! The stored grant of one account and the expiry arithmetic on it.

use std::time::Duration;

use crate::secret::Secret;

/// What the store keeps per account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The account name.
    pub account: String,
    /// The current access token.
    pub access_token: Secret,
    /// When the access token expires, unix seconds (absolute: never `expires_in`).
    pub expires_at: u64,
    /// The refresh token (the latest one, when the provider rotates them).
    pub refresh_token: Secret,
    /// Scopes the server reported granting, if it said.
    pub scope: Option<String>,
    /// When the current refresh token was received (import, login or rotation), unix seconds.
    pub obtained_at: u64,
    /// When the last successful refresh happened, unix seconds.
    pub refreshed_at: u64,
}

impl StoredToken {
    /// Seconds until the access token expires (negative when expired).
    pub fn remaining(&self, now: u64) -> i64 {
        i64::try_from(self.expires_at).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(i64::MAX)
    }

    /// The refresh margin applied to this token: the configured one, but at most half the token's
    /// lifetime — a provider issuing 5-minute tokens (Keycloak's default) with the default
    /// 5-minute margin would otherwise make every use a refresh and a long session reconnect
    /// in a tight loop.
    pub fn margin_for(&self, configured: Duration) -> u64 {
        configured
            .as_secs()
            .min(self.expires_at.saturating_sub(self.refreshed_at) / 2)
    }

    /// When a long session using this token should reconnect with a fresh one (unix seconds).
    pub fn renew_at(&self, configured: Duration) -> u64 {
        self.expires_at.saturating_sub(self.margin_for(configured))
    }

    /// Whether the token is valid for longer than its margin (see [`StoredToken::margin_for`])
    /// from `now`.
    pub fn fresh(&self, now: u64, margin: Duration) -> bool {
        self.remaining(now) > i64::try_from(self.margin_for(margin)).unwrap_or(i64::MAX)
    }

    /// Seconds since the refresh token was obtained.
    pub fn refresh_token_age(&self, now: u64) -> u64 {
        now.saturating_sub(self.obtained_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: u64) -> StoredToken {
        StoredToken {
            account: "a".into(),
            access_token: Secret::new("at"),
            expires_at,
            refresh_token: Secret::new("rt"),
            scope: None,
            obtained_at: 100,
            refreshed_at: 100,
        }
    }

    /// `Debug` shows neither token.
    #[test]
    fn debug_redacts() {
        let debug = format!("{:?}", token(1));
        assert!(
            !debug.contains("\"at\"") && !debug.contains("\"rt\""),
            "{debug}"
        );
        assert!(debug.contains("access_token: [redacted]"), "{debug}");
    }

    /// A short-lived token's margin is capped at half its lifetime.
    #[test]
    fn margin_capped_by_lifetime() {
        let mut t = token(400); // obtained/refreshed at 100: a 300 s token
        assert_eq!(t.margin_for(Duration::from_secs(300)), 150);
        assert!(t.fresh(249, Duration::from_secs(300)));
        assert!(!t.fresh(250, Duration::from_secs(300)));
        assert_eq!(t.renew_at(Duration::from_secs(300)), 250);
        t.expires_at = 100 + 3600;
        assert_eq!(t.margin_for(Duration::from_secs(300)), 300);
    }

    /// A token is fresh only with strictly more than the margin left.
    #[test]
    fn freshness_uses_margin() {
        let t = token(1_000);
        let margin = Duration::from_secs(300);
        assert!(t.fresh(699, margin));
        assert!(!t.fresh(700, margin));
        assert!(!t.fresh(2_000, margin));
        assert_eq!(t.remaining(1_010), -10);
        assert_eq!(t.refresh_token_age(160), 60);
    }
}
