//! The settings written in the config file as words (`tls = "starttls"`, `kind = "poll"`): each an
//! enum whose spelling is given once, in its [`Spelled::name`], and used both to read the file and
//! to show values back (`config check`, messages). lettre's `Mechanism` is the model.

use std::fmt;

/// An enum spelled as a word in the config file.
pub trait Spelled: Copy + Sized + 'static {
    /// Every value, in the order messages list them.
    const ALL: &'static [Self];

    /// The config spelling.
    fn name(self) -> &'static str;

    /// The value spelled `text`, if any.
    fn from_name(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == text)
    }

    /// Every spelling, for "expected one of" messages.
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name()).collect()
    }
}

/// `Display` as the config spelling, for the enums below.
macro_rules! display_as_name {
    ($($t:ty),+) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )+};
}

display_as_name!(
    Tls,
    Mechanism,
    ClientAuth,
    JobKind,
    Protocol,
    ProviderKind,
    Grant,
    RewriteFrom,
    Cloud
);

/// How an account gets its tokens: a person's grant, or an identity made for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A person signs in once (`auth login`); mailpilot keeps the refresh token fresh.
    AuthorizationCode,
    /// The app itself (OAuth2 client credentials, e.g. Microsoft 365 app-only): no person, no
    /// refresh token; a new access token is requested whenever one is needed.
    ClientCredentials,
    /// A Google service account acting for a Workspace user (domain-wide delegation): a signed
    /// JWT bearer grant, no person, no refresh token.
    ServiceAccount,
}

impl Spelled for Grant {
    const ALL: &'static [Self] = &[
        Grant::AuthorizationCode,
        Grant::ClientCredentials,
        Grant::ServiceAccount,
    ];

    fn name(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::ClientCredentials => "client_credentials",
            Grant::ServiceAccount => "service_account",
        }
    }
}

impl Grant {
    /// Whether a person signs in for it (and a refresh token is kept).
    pub fn needs_person(self) -> bool {
        matches!(self, Grant::AuthorizationCode)
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (465, 993).
    Implicit,
    /// Plain connect, then STARTTLS (587, 143).
    Starttls,
    /// No TLS: allowed to loopback hosts only.
    None,
}

impl Spelled for Tls {
    const ALL: &'static [Self] = &[Tls::Implicit, Tls::Starttls, Tls::None];

    fn name(self) -> &'static str {
        match self {
            Tls::Implicit => "implicit",
            Tls::Starttls => "starttls",
            Tls::None => "none",
        }
    }
}

/// SASL mechanism carrying the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Google's XOAUTH2 (Google and Microsoft).
    Xoauth2,
    /// RFC 7628 OAUTHBEARER (Google, Dovecot; not Microsoft).
    Oauthbearer,
}

impl Spelled for Mechanism {
    const ALL: &'static [Self] = &[Mechanism::Xoauth2, Mechanism::Oauthbearer];

    fn name(self) -> &'static str {
        match self {
            Mechanism::Xoauth2 => "xoauth2",
            Mechanism::Oauthbearer => "oauthbearer",
        }
    }
}

impl Mechanism {
    /// The SASL name on the wire (`AUTH XOAUTH2`, `AUTHENTICATE OAUTHBEARER`).
    pub fn sasl_name(self) -> &'static str {
        match self {
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer => "OAUTHBEARER",
        }
    }
}

/// Client authentication at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id`/`client_secret` in the form body.
    Body,
    /// HTTP Basic.
    Basic,
}

impl Spelled for ClientAuth {
    const ALL: &'static [Self] = &[ClientAuth::Body, ClientAuth::Basic];

    fn name(self) -> &'static str {
        match self {
            ClientAuth::Body => "body",
            ClientAuth::Basic => "basic",
        }
    }
}

/// What a `[jobs.NAME]` entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// `mailpilot send …`.
    Send,
    /// `mailpilot poll …`.
    Poll,
}

impl Spelled for JobKind {
    const ALL: &'static [Self] = &[JobKind::Send, JobKind::Poll];

    fn name(self) -> &'static str {
        match self {
            JobKind::Send => "send",
            JobKind::Poll => "poll",
        }
    }
}

/// Which of an account's servers: `[accounts.NAME.smtp]` or `[accounts.NAME.imap]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Outgoing mail.
    Smtp,
    /// Incoming mail.
    Imap,
}

impl Spelled for Protocol {
    const ALL: &'static [Self] = &[Protocol::Smtp, Protocol::Imap];

    fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
        }
    }
}

/// The `provider` word; [`super::Provider`] adds what a provider carries (the tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Gmail and Google Workspace.
    Google,
    /// Microsoft 365 / Outlook.com.
    Microsoft,
    /// Any other OAuth2 server.
    Custom,
}

impl Spelled for ProviderKind {
    const ALL: &'static [Self] = &[
        ProviderKind::Google,
        ProviderKind::Microsoft,
        ProviderKind::Custom,
    ];

    fn name(self) -> &'static str {
        match self {
            ProviderKind::Google => "google",
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Custom => "custom",
        }
    }
}

/// The Microsoft cloud a tenant lives in (`cloud = "..."`): each has its own sign-in and Exchange
/// hosts, and an app registered in one is unknown in the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cloud {
    /// Microsoft 365 worldwide (and GCC, which shares its hosts).
    #[default]
    Global,
    /// Microsoft 365 GCC High (US Government).
    UsGov,
    /// Microsoft 365 DoD (US Department of Defense).
    UsGovDod,
    /// Microsoft 365 operated by 21Vianet (China).
    China,
}

impl Spelled for Cloud {
    const ALL: &'static [Self] = &[Cloud::Global, Cloud::UsGov, Cloud::UsGovDod, Cloud::China];

    fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGov => "usgov",
            Cloud::UsGovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling reads back as its value.
    #[test]
    fn spellings_round_trip() {
        fn check<T: Spelled + PartialEq + fmt::Debug + fmt::Display>() {
            for v in T::ALL {
                assert_eq!(T::from_name(v.name()), Some(*v));
                assert_eq!(v.to_string(), v.name());
            }
            assert_eq!(T::from_name("nonsense"), None);
        }
        check::<Tls>();
        check::<Mechanism>();
        check::<ClientAuth>();
        check::<JobKind>();
        check::<Protocol>();
        check::<ProviderKind>();
        check::<Grant>();
        check::<Cloud>();
        assert_eq!(Tls::names(), ["implicit", "starttls", "none"]);
    }
}

/// When `sendmail` replaces a message's From with the account's (`[sendmail] rewrite_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RewriteFrom {
    /// A missing From, or one at a local host name (no dot in the domain, or none), becomes the
    /// account's `from`: Gmail and Microsoft refuse the others.
    #[default]
    Auto,
    /// Every From becomes the account's.
    Always,
    /// From is left as written (a missing one is still added).
    Never,
}

impl Spelled for RewriteFrom {
    const ALL: &'static [Self] = &[RewriteFrom::Auto, RewriteFrom::Always, RewriteFrom::Never];

    fn name(self) -> &'static str {
        match self {
            RewriteFrom::Auto => "auto",
            RewriteFrom::Always => "always",
            RewriteFrom::Never => "never",
        }
    }
}
