//! API keys (DESIGN.md §4): `tenlyr_live_tf_` (admin) or `tenlyr_live_`
//! (tenant), 32 random base62 characters (~190 bits), and a 6-character
//! base62 CRC32 checksum so a secret scanner can validate a key offline.
//!
//! Keys are stored as HMAC-SHA256 under a server-side pepper, looked up by
//! that digest. bcrypt is deliberately not used: a 190-bit random key cannot
//! be brute-forced, so bcrypt would only add ~100 ms to every cold lookup.

use ring::{hmac, rand::SecureRandom};

pub const ADMIN_PREFIX: &str = "tenlyr_live_tf_";
pub const TENANT_PREFIX: &str = "tenlyr_live_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Length of the displayed `apiKeyPrefix`.
pub const DISPLAY_PREFIX_LEN: usize = 16;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Admin,
    Tenant,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("API key has an unknown prefix")]
    UnknownPrefix,
    #[error("API key has the wrong length or characters")]
    Malformed,
    #[error("API key checksum does not match")]
    BadChecksum,
}

/// A freshly generated key: the plaintext exists only here and in the one
/// response that shows it.
pub struct NewKey {
    pub plaintext: String,
    pub kind: KeyKind,
}

impl NewKey {
    pub fn generate(kind: KeyKind) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let mut random = String::with_capacity(RANDOM_LEN);
        let mut buf = [0u8; 64];
        while random.len() < RANDOM_LEN {
            rng.fill(&mut buf).expect("the system random source works");
            // Rejection sampling keeps every character equally likely.
            for b in buf.iter().filter(|b| **b < 248) {
                if random.len() < RANDOM_LEN {
                    random.push(BASE62[usize::from(*b % 62)] as char);
                }
            }
        }
        let prefix = match kind {
            KeyKind::Admin => ADMIN_PREFIX,
            KeyKind::Tenant => TENANT_PREFIX,
        };
        let plaintext = format!("{prefix}{random}{}", checksum(&random));
        Self { plaintext, kind }
    }

    pub fn display_prefix(&self) -> &str {
        display_prefix(&self.plaintext)
    }
}

/// The first 16 characters, kept in plaintext for display.
pub fn display_prefix(key: &str) -> &str {
    &key[..DISPLAY_PREFIX_LEN.min(key.len())]
}

/// Checks the format and checksum of a presented key, without any lookup.
pub fn parse(key: &str) -> Result<KeyKind, KeyError> {
    let (kind, rest) = if let Some(rest) = key.strip_prefix(ADMIN_PREFIX) {
        (KeyKind::Admin, rest)
    } else if let Some(rest) = key.strip_prefix(TENANT_PREFIX) {
        (KeyKind::Tenant, rest)
    } else {
        return Err(KeyError::UnknownPrefix);
    };
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyError::Malformed);
    }
    let (random, sum) = rest.split_at(RANDOM_LEN);
    if checksum(random) != sum {
        return Err(KeyError::BadChecksum);
    }
    Ok(kind)
}

fn checksum(random: &str) -> String {
    let mut n = u64::from(crc32fast::hash(random.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// Bytes as lowercase hex (digests in logs, caches and derived tokens).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of keys under the server pepper.
pub struct KeyHasher {
    key: hmac::Key,
}

impl KeyHasher {
    pub fn new(pepper: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        }
    }

    pub fn digest(&self, key: &str) -> Vec<u8> {
        hmac::sign(&self.key, key.as_bytes()).as_ref().to_vec()
    }

    /// A secret derived from the pepper for another purpose (`label` names
    /// it; no API key starts with a NUL byte, so none collides).
    pub fn derive(&self, label: &str) -> Vec<u8> {
        self.digest(&format!("\0tenlyr:{label}"))
    }

    /// Constant-time comparison of a presented key against a stored digest.
    pub fn verify(&self, key: &str, digest: &[u8]) -> bool {
        hmac::verify(&self.key, key.as_bytes(), digest).is_ok()
    }

    /// Constant-time comparison of two digests (the lookup found a row by
    /// digest; this confirms it without a timing side channel).
    pub fn verify_digest(&self, computed: &[u8], stored: &[u8]) -> bool {
        computed.len() == stored.len()
            && computed
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_with_their_kind() {
        for kind in [KeyKind::Admin, KeyKind::Tenant] {
            let key = NewKey::generate(kind);
            assert_eq!(parse(&key.plaintext), Ok(kind));
            assert_eq!(key.display_prefix().len(), 16);
        }
        let admin = NewKey::generate(KeyKind::Admin).plaintext;
        assert!(admin.starts_with("tenlyr_live_tf_"));
        assert_eq!(admin.len(), 15 + 32 + 6);
    }

    #[test]
    fn typos_and_foreign_strings_are_rejected_offline() {
        let key = NewKey::generate(KeyKind::Tenant).plaintext;
        let mut typo = key.clone().into_bytes();
        let i = 20;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            parse(&String::from_utf8(typo).unwrap()),
            Err(KeyError::BadChecksum)
        );
        assert_eq!(parse("sk_live_abc"), Err(KeyError::UnknownPrefix));
        assert_eq!(parse("tenlyr_live_short"), Err(KeyError::Malformed));
        assert_eq!(parse(&format!("{key}x")), Err(KeyError::Malformed));
    }

    #[test]
    fn digests_depend_on_the_pepper_and_verify() {
        let key = NewKey::generate(KeyKind::Admin).plaintext;
        let a = KeyHasher::new(b"pepper-a");
        let b = KeyHasher::new(b"pepper-b");
        assert_ne!(a.digest(&key), b.digest(&key));
        assert!(a.verify(&key, &a.digest(&key)));
        assert!(!a.verify(&key, &b.digest(&key)));
    }
}
