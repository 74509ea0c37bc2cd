//! Relay passwords: argon2id hashes (PHC strings, as `mailpilot relay passwd` prints them), their
//! check, and the throttle on failed logins per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Failed logins from one address before it is throttled.
pub const MAX_FAILURES: u32 = 5;
/// How long a throttled address waits after its last failure.
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(900);
/// Addresses remembered at most (oldest forgotten first): a flood of addresses cannot grow memory.
const MAX_TRACKED: usize = 10_000;

/// An argon2id hash of `password` with a fresh random salt (the `argon2` crate's defaults: 19 MiB,
/// 2 passes, 1 lane — OWASP's recommendation).
///
/// # Errors
/// The system's random source failed.
pub fn hash(password: &Secret) -> Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| anyhow!("the system's random source failed"))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| anyhow!("failed to encode the salt: {e}"))?;
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow!("failed to hash the password: {e}"))
}

/// Whether `password` matches `hash` (constant time inside argon2; ~20 ms by design).
pub fn verify(hash: &str, password: &Secret) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok()
    })
}

/// Logins already proven in this process, so a client that logs in for every message (Postfix,
/// most apps) costs one argon2 run, not one per connection: user → SHA-256 of (hash, password).
#[derive(Debug, Default)]
pub struct Proven(HashMap<String, [u8; 32]>);

impl Proven {
    fn digest(hash: &str, password: &Secret) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(hash.as_bytes());
        h.update([0]);
        h.update(password.expose().as_bytes());
        h.finalize().into()
    }

    /// Whether this user proved this password against this hash before.
    pub fn knows(&self, user: &str, hash: &str, password: &Secret) -> bool {
        self.0
            .get(user)
            .is_some_and(|d| *d == Self::digest(hash, password))
    }

    /// Forgets every login (a reload may change passwords).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Remembers a login that argon2 accepted.
    pub fn remember(&mut self, user: &str, hash: &str, password: &Secret) {
        self.0
            .insert(user.to_string(), Self::digest(hash, password));
    }
}

/// Failed logins per client address.
#[derive(Debug, Default)]
pub struct Throttle(HashMap<IpAddr, (u32, Instant)>);

impl Throttle {
    /// Whether `ip` must wait (too many failures, the last one less than [`LOCKOUT`] ago).
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.0.get(&ip).is_some_and(|(count, last)| {
            *count >= MAX_FAILURES && now.duration_since(*last) < LOCKOUT
        })
    }

    /// Counts a failure of `ip`; returns its failures in the window so far.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> u32 {
        if self.0.len() >= MAX_TRACKED && !self.0.contains_key(&ip) {
            self.0
                .retain(|_, (_, last)| now.duration_since(*last) < WINDOW);
            if self.0.len() >= MAX_TRACKED {
                if let Some(oldest) = self.0.iter().min_by_key(|(_, (_, l))| *l).map(|(k, _)| *k) {
                    self.0.remove(&oldest);
                }
            }
        }
        let entry = self.0.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.0.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash verifies its password and no other, and is a PHC argon2id string.
    #[test]
    fn hash_and_verify() {
        let h = hash(&Secret::new("correct horse")).expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify(&h, &Secret::new("correct horse")));
        assert!(!verify(&h, &Secret::new("correct horsE")));
        assert!(!verify("not a hash", &Secret::new("x")));
        assert_ne!(
            h,
            hash(&Secret::new("correct horse")).expect("hash"),
            "salted"
        );
        let mut proven = Proven::default();
        assert!(!proven.knows("u", &h, &Secret::new("correct horse")));
        proven.remember("u", &h, &Secret::new("correct horse"));
        assert!(proven.knows("u", &h, &Secret::new("correct horse")));
        assert!(!proven.knows("u", &h, &Secret::new("wrong")));
        assert!(!proven.knows("v", &h, &Secret::new("correct horse")));
    }

    /// Five failures block an address for LOCKOUT; others are not affected; success clears it;
    /// old failures are forgotten.
    #[test]
    fn throttle() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        let mut t = Throttle::default();
        for n in 1..=MAX_FAILURES {
            assert!(!t.blocked(ip, t0));
            assert_eq!(t.failed(ip, t0), n);
        }
        assert!(t.blocked(ip, t0 + Duration::from_secs(1)));
        assert!(!t.blocked(other, t0));
        assert!(!t.blocked(ip, t0 + LOCKOUT));
        assert_eq!(t.failed(ip, t0 + WINDOW + LOCKOUT), 1, "forgotten");
        t.succeeded(ip);
        assert!(!t.blocked(ip, t0));
    }
}
