//! Where files live, resolved once from the process environment and passed down.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// The environment variables mailpilot reads for paths, captured at start-up so nothing deeper in
/// the stack reads the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `$HOME`.
    pub home: Option<OsString>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<OsString>,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<OsString>,
    /// `$MAILPILOT_CONFIG`.
    pub mailpilot_config: Option<OsString>,
    /// The system-wide config, used when the user has none ([`SYSTEM_CONFIG`]).
    pub system_config: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`/`LoadCredentialEncrypted=`).
    pub credentials_directory: Option<PathBuf>,
}

/// The system-wide configuration: what every user's `sendmail` (and the service user) reads when
/// they have no config of their own.
pub const SYSTEM_CONFIG: &str = "/etc/mailpilot/config.toml";

impl Env {
    /// Reads the variables from this process (empty values count as unset, as XDG says).
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
            mailpilot_config: var("MAILPILOT_CONFIG"),
            system_config: Some(PathBuf::from(SYSTEM_CONFIG)),
            credentials_directory: var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }

    /// The state key systemd passes as the credential `mailpilot.key`, if there is one.
    pub fn credential_key(&self) -> Option<PathBuf> {
        self.credentials_directory
            .as_ref()
            .map(|d| d.join("mailpilot.key"))
            .filter(|p| p.is_file())
    }

    /// The config file: `--config`, else `$MAILPILOT_CONFIG`, else
    /// `$XDG_CONFIG_HOME/mailpilot/config.toml` (default `~/.config`) if it exists, else
    /// [`SYSTEM_CONFIG`] if that exists (else the user's path, to report as missing).
    ///
    /// # Errors
    /// Neither an XDG variable nor `$HOME` is set, and there is no system config.
    pub fn config_path(&self, flag: Option<PathBuf>) -> Result<PathBuf> {
        if let Some(path) = flag.or_else(|| self.mailpilot_config.clone().map(PathBuf::from)) {
            return Ok(path);
        }
        let system = self.system_config.clone().filter(|p| p.is_file());
        let user = match self.xdg_dir(&self.xdg_config_home, ".config", "XDG_CONFIG_HOME") {
            Ok(dir) => dir.join("mailpilot/config.toml"),
            Err(e) => return system.ok_or(e),
        };
        Ok(match system {
            Some(system) if !user.exists() => system,
            _ => user,
        })
    }

    /// The state directory: `$XDG_STATE_HOME/mailpilot` (default `~/.local/state`).
    ///
    /// # Errors
    /// Neither `$XDG_STATE_HOME` nor `$HOME` is set.
    pub fn state_dir(&self) -> Result<PathBuf> {
        Ok(self
            .xdg_dir(&self.xdg_state_home, ".local/state", "XDG_STATE_HOME")?
            .join("mailpilot"))
    }

    fn xdg_dir(&self, var: &Option<OsString>, fallback: &str, name: &str) -> Result<PathBuf> {
        match (var, &self.home) {
            (Some(dir), _) => Ok(PathBuf::from(dir)),
            (None, Some(home)) => Ok(PathBuf::from(home).join(fallback)),
            (None, None) => bail!("neither ${name} nor $HOME is set; set one of them"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag beats the environment, which beats XDG, which beats HOME.
    #[test]
    fn config_precedence() {
        let mut env = Env {
            home: Some("/home/u".into()),
            ..Env::default()
        };
        assert_eq!(
            env.config_path(None).expect("path"),
            PathBuf::from("/home/u/.config/mailpilot/config.toml")
        );
        env.xdg_config_home = Some("/x".into());
        assert_eq!(
            env.config_path(None).expect("path"),
            PathBuf::from("/x/mailpilot/config.toml")
        );
        env.mailpilot_config = Some("/m.toml".into());
        assert_eq!(
            env.config_path(None).expect("path"),
            PathBuf::from("/m.toml")
        );
        assert_eq!(
            env.config_path(Some("/f.toml".into())).expect("path"),
            PathBuf::from("/f.toml")
        );
        assert_eq!(
            env.state_dir().expect("state"),
            PathBuf::from("/home/u/.local/state/mailpilot")
        );
    }

    /// The system config serves a user without a config of their own (or without a home), and
    /// never hides one the user has.
    #[test]
    fn system_config_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let system = dir.path().join("system.toml");
        let home = dir.path().join("home");
        let mut env = Env {
            home: Some(home.clone().into()),
            system_config: Some(system.clone()),
            ..Env::default()
        };
        let user = home.join(".config/mailpilot/config.toml");
        assert_eq!(env.config_path(None).expect("path"), user, "no system file");
        std::fs::write(&system, "").expect("system config");
        assert_eq!(env.config_path(None).expect("path"), system);
        std::fs::create_dir_all(user.parent().expect("dir")).expect("mkdir");
        std::fs::write(&user, "").expect("user config");
        assert_eq!(
            env.config_path(None).expect("path"),
            user,
            "the user's own wins"
        );
        env.home = None;
        assert_eq!(env.config_path(None).expect("path"), system, "no home");
    }
}
