//! Provider presets: endpoints, scopes, servers and mechanisms for Google and Microsoft, so a user
//! writes `provider = "google"` and an email address instead of copying URLs (and getting the
//! `outlook.office365.com` scope spelling or a missing `offline_access` wrong).

use super::{ClientAuth, Grant, Mechanism, ProviderKind, Spelled, Tls};

/// Which preset an account uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Gmail and Google Workspace.
    Google,
    /// Microsoft 365 / Outlook.com, with its tenant (`common`, `organizations`, `consumers`, a GUID or
    /// a domain).
    Microsoft {
        /// The Entra ID tenant in the endpoint paths.
        tenant: String,
    },
    /// Any other OAuth2 server; endpoints and servers come from the config.
    Custom,
}

/// Default server settings of a preset.
#[derive(Debug, Clone, Copy)]
pub struct ServerPreset {
    /// Host name.
    pub host: &'static str,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: Tls,
}

impl Provider {
    /// The `provider` word.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Google => ProviderKind::Google,
            Provider::Microsoft { .. } => ProviderKind::Microsoft,
            Provider::Custom => ProviderKind::Custom,
        }
    }

    /// The config spelling of the provider.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The authorization endpoint.
    pub fn auth_url(&self) -> Option<String> {
        match self {
            Provider::Google => Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            Provider::Microsoft { tenant } => Some(ms_endpoint(tenant, "authorize")),
            Provider::Custom => None,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> Option<String> {
        match self {
            Provider::Google => Some("https://oauth2.googleapis.com/token".into()),
            Provider::Microsoft { tenant } => Some(ms_endpoint(tenant, "token")),
            Provider::Custom => None,
        }
    }

    /// The device authorization endpoint. Google has one, but it refuses Gmail scopes, so the
    /// preset leaves it out.
    pub fn device_url(&self) -> Option<String> {
        match self {
            Provider::Microsoft { tenant } => Some(ms_endpoint(tenant, "devicecode")),
            Provider::Google | Provider::Custom => None,
        }
    }

    /// The token revocation endpoint (Microsoft has none for refresh tokens).
    pub fn revoke_url(&self) -> Option<String> {
        match self {
            Provider::Google => Some("https://oauth2.googleapis.com/revoke".into()),
            Provider::Microsoft { .. } | Provider::Custom => None,
        }
    }

    /// The scopes mail access needs with `grant`.
    pub fn scopes(&self, grant: Grant) -> Vec<String> {
        let scopes: &[&str] = match (self, grant) {
            // App-only: the application permissions granted to the app, as Entra requires them.
            (Provider::Microsoft { .. }, Grant::ClientCredentials) => {
                &["https://outlook.office365.com/.default"]
            }
            (Provider::Google, _) => &["https://mail.google.com/"],
            (Provider::Microsoft { .. }, Grant::AuthorizationCode | Grant::ServiceAccount) => &[
                "offline_access",
                "https://outlook.office.com/IMAP.AccessAsUser.All",
                "https://outlook.office.com/SMTP.Send",
            ],
            (Provider::Custom, _) => &[],
        };
        scopes.iter().map(|s| s.to_string()).collect()
    }

    /// Whether a refresh request repeats the scopes. Microsoft requires it (AADSTS900144 without);
    /// elsewhere it is left out, which RFC 6749 §6 defines as "the scopes originally granted" —
    /// repeating a scope the server did not grant would make every refresh fail (`invalid_scope`).
    pub fn scope_on_refresh(&self) -> bool {
        matches!(self, Provider::Microsoft { .. })
    }

    /// How a confidential client authenticates by default. Google and Microsoft take the secret in
    /// the form body; RFC 6749 makes HTTP Basic the one every server must support.
    pub fn client_auth(&self) -> ClientAuth {
        match self {
            Provider::Google | Provider::Microsoft { .. } => ClientAuth::Body,
            Provider::Custom => ClientAuth::Basic,
        }
    }

    /// The SMTP server of the preset.
    pub fn smtp(&self) -> Option<ServerPreset> {
        match self {
            Provider::Google => Some(ServerPreset {
                host: "smtp.gmail.com",
                port: 465,
                tls: Tls::Implicit,
            }),
            Provider::Microsoft { .. } => Some(ServerPreset {
                host: "smtp.office365.com",
                port: 587,
                tls: Tls::Starttls,
            }),
            Provider::Custom => None,
        }
    }

    /// The IMAP server of the preset.
    pub fn imap(&self) -> Option<ServerPreset> {
        match self {
            Provider::Google => Some(ServerPreset {
                host: "imap.gmail.com",
                port: 993,
                tls: Tls::Implicit,
            }),
            Provider::Microsoft { .. } => Some(ServerPreset {
                host: "outlook.office365.com",
                port: 993,
                tls: Tls::Implicit,
            }),
            Provider::Custom => None,
        }
    }

    /// Mechanisms the provider's servers accept; Microsoft rejects OAUTHBEARER.
    pub fn accepts(&self, mechanism: Mechanism) -> bool {
        !matches!(
            (self, mechanism),
            (Provider::Microsoft { .. }, Mechanism::Oauthbearer)
        )
    }
}

fn ms_endpoint(tenant: &str, what: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft endpoints carry the tenant and the v2.0 path.
    #[test]
    fn microsoft_endpoints() {
        let p = Provider::Microsoft {
            tenant: "consumers".into(),
        };
        assert_eq!(
            p.token_url().as_deref(),
            Some("https://login.microsoftonline.com/consumers/oauth2/v2.0/token")
        );
        assert!(p
            .scopes(Grant::AuthorizationCode)
            .contains(&"offline_access".to_string()));
        assert_eq!(
            p.scopes(Grant::ClientCredentials),
            ["https://outlook.office365.com/.default"]
        );
        assert!(!p.accepts(Mechanism::Oauthbearer));
    }
}
