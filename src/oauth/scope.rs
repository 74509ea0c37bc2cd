//! Which scopes a grant lacks, and which a refresh asks for. Pure.
//!
//! A server may grant fewer scopes than asked (a user unticking a permission, a client not
//! allowed one). A refresh that repeats such a scope is refused with `invalid_scope` — every
//! refresh, for good — so a refresh asks only for what the grant holds.

use crate::config::Account;

/// Scopes servers grant without echoing them in the token answer's `scope`; their absence there
/// proves nothing.
const NOT_ECHOED: [&str; 4] = ["offline_access", "openid", "email", "profile"];

/// The account's scopes that the grant (`granted`, the token answer's `scope`) does not hold.
/// Empty when the server did not say what it granted.
pub fn missing(account: &Account, granted: Option<&str>) -> Vec<String> {
    let Some(granted) = granted else {
        return Vec::new();
    };
    let granted: Vec<&str> = granted.split_whitespace().collect();
    account
        .scopes
        .iter()
        .filter(|s| !NOT_ECHOED.contains(&s.as_str()))
        .filter(|s| !granted.iter().any(|g| g.eq_ignore_ascii_case(s)))
        .cloned()
        .collect()
}

/// The scopes a refresh of a grant holding `granted` sends: none where the provider does not
/// need them (RFC 6749 §6: the scopes originally granted), else the account's scopes less the
/// ones the grant lacks.
pub fn on_refresh(account: &Account, granted: Option<&str>) -> Vec<String> {
    if !account.provider.scope_on_refresh() {
        return Vec::new();
    }
    let missing = missing(account, granted);
    account
        .scopes
        .iter()
        .filter(|s| !missing.contains(s))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(provider: &str, scopes: &str) -> Account {
        let text = format!(
            "[accounts.a]\nprovider = \"{provider}\"\nemail = \"a@example.com\"\nclient_id = \"id\"\ntoken_url = \"https://t.example/token\"\nscopes = {scopes}\n"
        );
        let config =
            crate::config::Config::from_text(&text, std::path::Path::new("/x/c.toml"), false)
                .expect("config");
        config.account("a").expect("account").clone()
    }

    /// A scope the server left out is missing; scopes servers do not echo never are.
    #[test]
    fn missing_scopes() {
        let a = account("custom", r#"["offline_access", "mail", "smtp"]"#);
        assert_eq!(missing(&a, Some("MAIL")), ["smtp"]);
        assert!(missing(&a, Some("mail smtp")).is_empty());
        assert!(missing(&a, None).is_empty());
    }

    /// Microsoft repeats its scopes less the ungranted ones; a custom server gets none.
    #[test]
    fn refresh_scopes() {
        let ms = account(
            "microsoft",
            r#"["offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"]"#,
        );
        assert_eq!(
            on_refresh(
                &ms,
                Some("https://outlook.office.com/IMAP.AccessAsUser.All")
            ),
            [
                "offline_access",
                "https://outlook.office.com/IMAP.AccessAsUser.All"
            ]
        );
        assert_eq!(on_refresh(&ms, None).len(), 3);
        let custom = account("custom", r#"["mail", "smtp"]"#);
        assert!(on_refresh(&custom, Some("mail")).is_empty());
    }
}
