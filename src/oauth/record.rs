//! The stored form of a grant, shared by every backend: a versioned JSON record (version 1 plain,
//! version 2 with both tokens sealed under the state key, see [`crate::seal`]). The file store
//! writes it to `tokens/<account>.json`, the database store into a `jsonb` column, so a migration
//! between them copies records as they are (sealed ones stay sealed). Never does I/O.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::token::StoredToken;
use crate::seal::Key;
use crate::secret::Secret;

/// The record format of plain tokens.
pub const FORMAT_VERSION: u32 = 1;
/// The record format of sealed tokens (with the id of the key that sealed them).
pub const SEALED_VERSION: u32 = 2;

/// The on-disk shape, version 1. Separate from [`StoredToken`] so that the secret-bearing strings
/// exist in plain form only inside this module.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenFileV1 {
    version: u32,
    account: String,
    /// Version 2: the id of the key the two tokens are sealed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    access_token: String,
    expires_at: u64,
    refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    obtained_at: u64,
    refreshed_at: u64,
}

/// The record of `token`, sealed under `key` when there is one.
///
/// # Errors
/// Sealing fails.
pub fn encode(token: &StoredToken, key: Option<&Key>) -> Result<Vec<u8>> {
    let account = &token.account;
    let (version, key_id, access_token, refresh_token) = match key {
        Some(key) => {
            let seal = |value: &Secret, field: &str| {
                key.seal(value, &context(account, field))
                    .map_err(|e| anyhow::anyhow!("failed to seal the {field}: {e}"))
            };
            (
                SEALED_VERSION,
                Some(key.id().to_string()),
                seal(&token.access_token, "access_token")?,
                seal(&token.refresh_token, "refresh_token")?,
            )
        }
        None => (
            FORMAT_VERSION,
            None,
            token.access_token.expose().to_string(),
            token.refresh_token.expose().to_string(),
        ),
    };
    let file = TokenFileV1 {
        version,
        account: account.clone(),
        key_id,
        access_token,
        expires_at: token.expires_at,
        refresh_token,
        scope: token.scope.clone(),
        obtained_at: token.obtained_at,
        refreshed_at: token.refreshed_at,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).context("failed to encode token file")?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A token file's format version, checked before its shape so a newer format gets the right
/// message.
pub fn version(bytes: &[u8], what: &str) -> Result<u32> {
    #[derive(Deserialize)]
    struct Version {
        version: Option<u32>,
    }
    let version: Version = serde_json::from_slice(bytes)
        .with_context(|| format!("{what} is corrupt (not a JSON object)"))?;
    match version.version {
        Some(v @ (FORMAT_VERSION | SEALED_VERSION)) => Ok(v),
        Some(v) => bail!(
            "{what} has format version {v}, but this mailpilot reads versions {FORMAT_VERSION} and {SEALED_VERSION} (was it written by a newer mailpilot?)"
        ),
        None => bail!("{what} is corrupt (no \"version\" field)"),
    }
}

/// Parses a token file, checking its version before its shape so a newer format gets the right
/// message.
pub fn decode(bytes: &[u8], what: &str, account: &str, key: Option<&Key>) -> Result<StoredToken> {
    let version = version(bytes, what)?;
    let file: TokenFileV1 =
        serde_json::from_slice(bytes).with_context(|| format!("{what} is corrupt"))?;
    if file.account != account {
        bail!(
            "{what} belongs to account \"{}\", not \"{account}\"",
            file.account
        );
    }
    let (access_token, refresh_token) = match (&file.key_id, version) {
        (None, FORMAT_VERSION) => (
            Secret::new(file.access_token),
            Secret::new(file.refresh_token),
        ),
        (Some(sealed_with), SEALED_VERSION) => {
            let key = key_for(key, sealed_with, what, account)?;
            let open = |value: &str, field: &str| {
                key.open(value, &context(account, field))
                    .map_err(|e| anyhow::anyhow!("{what} is corrupt ({field}: {e})"))
            };
            (
                open(&file.access_token, "access_token")?,
                open(&file.refresh_token, "refresh_token")?,
            )
        }
        _ => bail!("{what} is corrupt (version and key_id do not agree)"),
    };
    Ok(StoredToken {
        account: file.account,
        access_token,
        expires_at: file.expires_at,
        refresh_token,
        scope: file.scope,
        obtained_at: file.obtained_at,
        refreshed_at: file.refreshed_at,
    })
}

/// What a sealed token's field is bound to (a value cannot be moved to another account or field).
fn context(account: &str, field: &str) -> String {
    format!("mailpilot token {account} {field}")
}

/// The configured key, if it is the one `sealed_with` names.
fn key_for<'k>(
    key: Option<&'k Key>,
    sealed_with: &str,
    what: &str,
    account: &str,
) -> Result<&'k Key> {
    let fix = format!(
        "set [state] key_file to the key with id {sealed_with} (or give it as the systemd credential mailpilot.key); without it, sign in again: mailpilot auth logout {account} && mailpilot auth login {account}"
    );
    match key {
        Some(k) if k.id() == sealed_with => Ok(k),
        Some(k) => Err(crate::error::KeyError {
            reason: format!(
                "the tokens in {what} are sealed with key {sealed_with}, but the configured state key is {}",
                k.id()
            ),
            hint: fix,
        }
        .into()),
        None => Err(crate::error::KeyError {
            reason: format!(
                "the tokens in {what} are sealed with key {sealed_with}, and no state key is configured"
            ),
            hint: fix,
        }
        .into()),
    }
}
