//! Secret values and the per-deployment ed25519 keys.
//!
//! [`Secret`] wraps anything that must never be printed: its `Debug` and `Display` show
//! a placeholder, and its memory is wiped on drop. Key generation lives here so the rest
//! of the code only ever sees public halves in plain `String`s.

use std::fmt;

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use zeroize::Zeroizing;

/// A value that must never reach logs, outputs, state or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value itself, for the few places that must send it (user-data host key, SSH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// 128 bits from the operating system's random source, as 32 hex digits: a token no
/// text printed before it can know (the log fence's).
pub fn random_token() -> String {
    use ssh_key::rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OpenSSH ed25519 key pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// One-line `ssh-ed25519 AAAA... comment`.
    pub public: String,
    /// The OpenSSH private key file's text.
    pub private: Secret,
}

impl KeyPair {
    /// A fresh random ed25519 key pair from the operating system's random source.
    pub fn generate(comment: &str) -> Result<Self, ssh_key::Error> {
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
        key.set_comment(comment);
        let private = key.to_openssh(LineEnding::LF)?;
        Ok(Self { public: key.public_key().to_openssh()?, private: Secret::new(private.as_str()) })
    }
}

/// The keys a deployment needs: the instance's SSH host key (handed over in user-data so
/// the connection is pinned) and the client key `spot` logs in with.
#[derive(Debug, Clone)]
pub struct DeploymentKeys {
    pub host: KeyPair,
    pub client: KeyPair,
}

impl DeploymentKeys {
    pub fn generate(deployment_id: &str) -> Result<Self, ssh_key::Error> {
        Ok(Self {
            host: KeyPair::generate(&format!("{deployment_id} host"))?,
            client: KeyPair::generate(&format!("{deployment_id} spot"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn generated_keys_are_openssh_ed25519() {
        let k = KeyPair::generate("test").unwrap();
        assert!(k.public.starts_with("ssh-ed25519 "));
        assert!(k.private.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let other = KeyPair::generate("test").unwrap();
        assert_ne!(k.public, other.public);
    }
}
