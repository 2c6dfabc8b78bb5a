//! The optional session key: every packet then carries a 16-byte keyed BLAKE3 MAC.

use std::fmt;

use crate::name::SessionName;

/// Length of the MAC appended to every packet of a keyed session.
pub const MAC_LEN: usize = 16;

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
        let salt = format!("imgcast-v1:{}", name.as_str());
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

    /// The MAC of `data`: the first 16 bytes of keyed BLAKE3.
    pub(crate) fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let h = blake3::keyed_hash(&self.0, data);
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
        out
    }

    /// Checks a MAC in constant time.
    pub(crate) fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        let h = blake3::keyed_hash(&self.0, data);
        // Truncated compare in constant time: fold the differences.
        mac.len() == MAC_LEN
            && h.as_bytes()[..MAC_LEN]
                .iter()
                .zip(mac)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
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
        let mac = k1.mac(b"hello");
        assert!(k1.verify(b"hello", &mac));
        assert!(!k1.verify(b"hellp", &mac));
        assert!(!k1.verify(b"hello", &mac[..15]));
        assert_eq!(format!("{k1:?}"), "SessionKey(..)");
    }
}
