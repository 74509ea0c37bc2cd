//! `[accounts.NAME.smtp]` and `[accounts.NAME.imap]`: the preset's server with the file's
//! overrides, checked (a port in range, a mechanism the provider accepts, no clear text off
//! loopback, a readable `ca_file`).

use std::path::Path;

use super::super::raw::RawServer;
use super::super::{Mechanism, Protocol, Provider, Server, ServerPreset, Tls};
use super::{choice, Problems};

/// Where a server table sits and what surrounds it.
pub(super) struct ServerCtx<'a> {
    /// `accounts.NAME.smtp`.
    pub path: &'a str,
    /// Which server it is.
    pub protocol: Protocol,
    /// The account's provider (presets, accepted mechanisms).
    pub provider: &'a Provider,
    /// The config file's directory (relative `ca_file`).
    pub dir: &'a Path,
}

/// The validated server, if the account has one (from the file or the preset).
pub(super) fn server(
    raw: Option<&RawServer>,
    preset: Option<ServerPreset>,
    ctx: &ServerCtx<'_>,
    problems: &mut Problems,
) -> Option<Server> {
    if raw.is_none() && preset.is_none() {
        return None;
    }
    let empty = RawServer::default();
    let raw = raw.unwrap_or(&empty);
    let path = ctx.path;
    let tls = match raw.tls.as_deref() {
        None => preset.map_or(Tls::Implicit, |p| p.tls),
        Some(word) => choice(word, &format!("{path}.tls"), problems).unwrap_or(Tls::Implicit),
    };
    let host = host(raw.host.as_deref(), preset, path, problems);
    let port = match raw.port {
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(
                    format!("{path}.port"),
                    format!("{p} is not a port (expected 1..=65535)"),
                );
                None
            }
        },
        None => Some(default_port(ctx.protocol, tls, preset)),
    };
    let mechanism = match raw.mechanism.as_deref() {
        None => Mechanism::Xoauth2,
        Some(word) => {
            choice(word, &format!("{path}.mechanism"), problems).unwrap_or(Mechanism::Xoauth2)
        }
    };
    if !ctx.provider.accepts(mechanism) {
        problems.push(
            format!("{path}.mechanism"),
            format!("{} servers accept only \"xoauth2\"", ctx.provider.name()),
        );
    }
    if let (Tls::None, Some(h)) = (tls, &host) {
        if !is_loopback(h) {
            problems.push(
                format!("{path}.tls"),
                format!("\"none\" is allowed only to a loopback host (got \"{h}\"): the token would cross the network in clear text"),
            );
        }
    }
    let ca_file = raw.ca_file.as_ref().map(|f| ctx.dir.join(f));
    if let Some(f) = &ca_file {
        if !f.is_file() {
            problems.push(
                format!("{path}.ca_file"),
                format!("{} is not a readable file", f.display()),
            );
        }
    }
    Some(Server {
        host: host?,
        port: port?,
        tls,
        ca_file,
        mechanism,
        proxy: None,
    })
}

/// The host from the file, else the preset's.
fn host(
    given: Option<&str>,
    preset: Option<ServerPreset>,
    path: &str,
    problems: &mut Problems,
) -> Option<String> {
    match (given, preset) {
        (Some(h), _) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
            problems.push(
                format!("{path}.host"),
                format!("\"{h}\" is not a host name"),
            );
            None
        }
        (Some(h), _) => Some(h.to_string()),
        (None, Some(p)) => Some(p.host.to_string()),
        (None, None) => {
            problems.push(
                format!("{path}.host"),
                "missing (required for provider = \"custom\")",
            );
            None
        }
    }
}

/// The port when the config gives none: the preset's if the TLS mode matches it, else the
/// standard port of the TLS mode.
fn default_port(protocol: Protocol, tls: Tls, preset: Option<ServerPreset>) -> u16 {
    match (preset, protocol, tls) {
        (Some(p), _, _) if p.tls == tls => p.port,
        (_, Protocol::Smtp, Tls::Implicit) => 465,
        (_, Protocol::Smtp, _) => 587,
        (_, Protocol::Imap, Tls::Implicit) => 993,
        (_, Protocol::Imap, _) => 143,
    }
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1.
pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
