//! Secrets at rest (DESIGN.md §8): AES-256-GCM (ring) with a random 96-bit
//! nonce per message, stored as `nonce ‖ ciphertext ‖ tag`.

use std::sync::Arc;

use ring::aead;

/// Seals and opens small secrets under one 256-bit key; cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    key: Arc<aead::LessSafeKey>,
}

impl SecretBox {
    /// `key`: at least 32 bytes; the first 32 are the AES-256 key.
    pub fn new(key: &[u8]) -> Self {
        let key =
            aead::UnboundKey::new(&aead::AES_256_GCM, &key[..32]).expect("a 32-byte AES-256 key");
        Self {
            key: Arc::new(aead::LessSafeKey::new(key)),
        }
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
        let mut out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut out,
            )
            .expect("sealing cannot fail for in-memory data");
        [nonce.as_slice(), &out].concat()
    }

    /// The plaintext, or `None` if `sealed` was not sealed under this key
    /// or was altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, data) = sealed.split_at_checked(12)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::empty(), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_under_their_key_and_unaltered() {
        let a = SecretBox::new(&[7; 32]);
        let b = SecretBox::new(&[8; 32]);
        let sealed = a.seal(b"whsec_abc");
        assert_ne!(a.seal(b"whsec_abc"), sealed, "a fresh nonce each time");
        assert_eq!(a.open(&sealed).unwrap(), b"whsec_abc");
        assert!(b.open(&sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(a.open(&altered).is_none());
        assert!(a.open(b"short").is_none());
    }
}
