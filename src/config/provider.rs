//! Provider presets: endpoints, scopes, servers and mechanisms for Google and Microsoft, so a user
//! writes `provider = "google"` and an email address instead of copying URLs (and getting the
//! `outlook.office365.com` scope spelling or a missing `offline_access` wrong).

use super::{ClientAuth, Cloud, Grant, Mechanism, ProviderKind, Spelled, Tls};

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
        /// The cloud the tenant lives in.
        cloud: Cloud,
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
            Provider::Microsoft { tenant, cloud } => Some(ms_endpoint(*cloud, tenant, "authorize")),
            Provider::Custom => None,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> Option<String> {
        match self {
            Provider::Google => Some("https://oauth2.googleapis.com/token".into()),
            Provider::Microsoft { tenant, cloud } => Some(ms_endpoint(*cloud, tenant, "token")),
            Provider::Custom => None,
        }
    }

    /// The device authorization endpoint. Google has one, but it refuses Gmail scopes, so the
    /// preset leaves it out.
    pub fn device_url(&self) -> Option<String> {
        match self {
            Provider::Microsoft { tenant, cloud } => {
                Some(ms_endpoint(*cloud, tenant, "devicecode"))
            }
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
        match (self, grant) {
            // App-only: the application permissions granted to the app, as Entra requires them.
            (Provider::Microsoft { cloud, .. }, Grant::ClientCredentials) => {
                vec![format!("{}/.default", hosts(*cloud).app_resource)]
            }
            (Provider::Google, _) => vec!["https://mail.google.com/".into()],
            (
                Provider::Microsoft { cloud, .. },
                Grant::AuthorizationCode | Grant::ServiceAccount,
            ) => {
                let resource = hosts(*cloud).user_resource;
                vec![
                    "offline_access".into(),
                    format!("{resource}/IMAP.AccessAsUser.All"),
                    format!("{resource}/SMTP.Send"),
                ]
            }
            (Provider::Custom, _) => Vec::new(),
        }
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
            Provider::Microsoft { cloud, .. } => Some(ServerPreset {
                host: hosts(*cloud).smtp,
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
            Provider::Microsoft { cloud, .. } => Some(ServerPreset {
                host: hosts(*cloud).imap,
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

/// The hosts of one Microsoft cloud.
#[derive(Debug, Clone, Copy)]
pub struct CloudHosts {
    /// Entra ID's sign-in host.
    pub login: &'static str,
    /// The resource of delegated mail scopes (`{resource}/IMAP.AccessAsUser.All`).
    pub user_resource: &'static str,
    /// The resource of app-only mail permissions (`{resource}/.default`).
    pub app_resource: &'static str,
    /// IMAP (993, TLS).
    pub imap: &'static str,
    /// SMTP submission (587, STARTTLS).
    pub smtp: &'static str,
}

/// Each cloud's hosts, from Microsoft's national-cloud documentation ("Microsoft Entra
/// authentication endpoints", "Office 365 U.S. Government GCC High / DoD endpoints", "Office 365
/// operated by 21Vianet endpoints"); GCC (not High) uses the global hosts.
pub fn hosts(cloud: Cloud) -> CloudHosts {
    match cloud {
        Cloud::Global => CloudHosts {
            login: "login.microsoftonline.com",
            user_resource: "https://outlook.office.com",
            app_resource: "https://outlook.office365.com",
            imap: "outlook.office365.com",
            smtp: "smtp.office365.com",
        },
        Cloud::UsGov => CloudHosts {
            login: "login.microsoftonline.us",
            user_resource: "https://outlook.office365.us",
            app_resource: "https://outlook.office365.us",
            imap: "outlook.office365.us",
            smtp: "smtp.office365.us",
        },
        Cloud::UsGovDod => CloudHosts {
            login: "login.microsoftonline.us",
            user_resource: "https://outlook-dod.office365.us",
            app_resource: "https://outlook-dod.office365.us",
            imap: "outlook-dod.office365.us",
            smtp: "outlook-dod.office365.us",
        },
        Cloud::China => CloudHosts {
            login: "login.chinacloudapi.cn",
            user_resource: "https://partner.outlook.cn",
            app_resource: "https://partner.outlook.cn",
            imap: "partner.outlook.cn",
            smtp: "partner.outlook.cn",
        },
    }
}

fn ms_endpoint(cloud: Cloud, tenant: &str, what: &str) -> String {
    format!("https://{}/{tenant}/oauth2/v2.0/{what}", hosts(cloud).login)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft endpoints carry the tenant and the v2.0 path.
    #[test]
    fn microsoft_endpoints() {
        let p = Provider::Microsoft {
            tenant: "consumers".into(),
            cloud: Cloud::Global,
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

    /// A sovereign cloud changes every host: sign-in, scopes, servers.
    #[test]
    fn microsoft_clouds() {
        let p = Provider::Microsoft {
            tenant: "contoso.onmicrosoft.us".into(),
            cloud: Cloud::UsGov,
        };
        assert_eq!(
            p.auth_url().as_deref(),
            Some("https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/authorize")
        );
        assert_eq!(
            p.scopes(Grant::AuthorizationCode)[1],
            "https://outlook.office365.us/IMAP.AccessAsUser.All"
        );
        assert_eq!(p.smtp().map(|s| s.host), Some("smtp.office365.us"));
        let china = Provider::Microsoft {
            tenant: "common".into(),
            cloud: Cloud::China,
        };
        assert_eq!(
            china.scopes(Grant::ClientCredentials),
            ["https://partner.outlook.cn/.default"]
        );
        assert_eq!(china.imap().map(|s| s.host), Some("partner.outlook.cn"));
    }
}
