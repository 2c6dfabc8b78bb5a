//! The optional session key (`-key`): derived once from the passphrase; each run's packet key is
//! derived from it, the name and the run's session id ([`crate::PacketKey`]).

use std::fmt;

use crate::name::SessionName;

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The passphrase is empty.
    #[error("the session key passphrase is empty")]
    EmptyPassphrase,
    /// Argon2 refused its input.
    #[error("key derivation failed: {0}")]
    Derive(String),
}

/// A 32-byte key shared by the master and its clients.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// Derives the key from a passphrase with Argon2id (19 MiB, 2 passes), salted with the session name,
    /// so a captured packet does not allow a cheap dictionary attack and one passphrase gives
    /// different keys for different sessions.
    pub fn derive(passphrase: &str, name: &SessionName) -> Result<Self, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        let salt = format!("imgcast-v2:{}", name.as_str());
        let mut key = [0u8; 32];
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), salt.as_bytes(), &mut key)
            .map_err(|e| KeyError::Derive(e.to_string()))?;
        Ok(Self(key))
    }

    /// A key from raw bytes (e.g. read from a key file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key material, for deriving run keys.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_depends_on_passphrase_and_name() {
        let a = SessionName::new("a").unwrap();
        let b = SessionName::new("b").unwrap();
        let k1 = SessionKey::derive("secret", &a).unwrap();
        assert_eq!(k1, SessionKey::derive("secret", &a).unwrap());
        assert_ne!(k1, SessionKey::derive("secret", &b).unwrap());
        assert_ne!(k1, SessionKey::derive("Secret", &a).unwrap());
        assert_eq!(SessionKey::derive("", &a), Err(KeyError::EmptyPassphrase));
        assert_eq!(format!("{k1:?}"), "SessionKey(..)");
    }
}
