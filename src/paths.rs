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
}

impl Env {
    /// Reads the variables from this process (empty values count as unset, as XDG says).
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
            mailpilot_config: var("MAILPILOT_CONFIG"),
        }
    }

    /// The config file: `--config`, else `$MAILPILOT_CONFIG`, else
    /// `$XDG_CONFIG_HOME/mailpilot/config.toml` (default `~/.config`).
    ///
    /// # Errors
    /// Neither an XDG variable nor `$HOME` is set.
    pub fn config_path(&self, flag: Option<PathBuf>) -> Result<PathBuf> {
        if let Some(path) = flag.or_else(|| self.mailpilot_config.clone().map(PathBuf::from)) {
            return Ok(path);
        }
        Ok(self
            .xdg_dir(&self.xdg_config_home, ".config", "XDG_CONFIG_HOME")?
            .join("mailpilot/config.toml"))
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
}
