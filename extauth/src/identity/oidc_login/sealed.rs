//! Authenticated encryption for what the login flow hands to the browser or to Redis: the
//! login-state cookies (sealed under the configured cookie secret) and session records
//! (sealed under each session's own key, which only the session cookie carries).
//!
//! AES-256-GCM from ring, a fresh random 96-bit nonce per seal, and associated data that binds
//! a sealed value to where it belongs (a cookie's name, a session's Redis key): a value moved
//! to another cookie or another session does not open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// A 256-bit AEAD key.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn new(bytes: &[u8; 32]) -> SealKey {
        SealKey(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key")))
    }

    /// A key for one purpose, derived from a longer-lived secret (HKDF-SHA256), so that the
    /// cookie secret never encrypts two kinds of value under one key.
    pub fn derive(secret: &[u8], purpose: &str) -> SealKey {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"gatehouse-extauth oidc_login");
        let info = [purpose.as_bytes()];
        let prk = salt.extract(secret);
        let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF output of one AES-256 key");
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).expect("32 bytes");
        SealKey::new(&bytes)
    }

    /// `nonce || ciphertext || tag`, base64url without padding.
    pub fn seal(&self, associated: &str, plaintext: &[u8]) -> String {
        let nonce_bytes = random::<NONCE_LEN>();
        let mut in_out = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(associated), &mut in_out)
            .expect("AES-GCM seals any plaintext under 64 GiB");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&in_out);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The plaintext, or `None` for anything not sealed by this key with this associated data
    /// (tampered, truncated, moved, or not base64).
    pub fn open(&self, associated: &str, sealed: &str) -> Option<Vec<u8>> {
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN]).ok()?;
        let plaintext = self.0.open_in_place(nonce, Aad::from(associated), &mut bytes[NONCE_LEN..]).ok()?;
        Some(plaintext.to_vec())
    }
}

/// `N` bytes from the system's CSPRNG.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("the system CSPRNG");
    bytes
}

/// `N` random bytes as base64url: state values, session ids.
pub fn random_token<const N: usize>() -> String {
    URL_SAFE_NO_PAD.encode(random::<N>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let key = SealKey::derive(b"a secret of at least thirty-two bytes!!", "login-state");
        let sealed = key.seal("__Host-cookie-a", b"payload");
        assert_eq!(key.open("__Host-cookie-a", &sealed).as_deref(), Some(&b"payload"[..]));
        // Moved to another cookie, or opened with a key for another purpose: refused.
        assert_eq!(key.open("__Host-cookie-b", &sealed), None);
        let other = SealKey::derive(b"a secret of at least thirty-two bytes!!", "session");
        assert_eq!(other.open("__Host-cookie-a", &sealed), None);
        // Every single-bit change, and truncation, is refused.
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut flipped = raw.clone();
            flipped[i] ^= 1;
            assert_eq!(key.open("__Host-cookie-a", &URL_SAFE_NO_PAD.encode(flipped)), None, "byte {i}");
        }
        assert_eq!(key.open("__Host-cookie-a", &sealed[..sealed.len() - 4]), None);
        assert_eq!(key.open("__Host-cookie-a", "not base64 !"), None);
        assert_eq!(key.open("__Host-cookie-a", ""), None);
        // A fresh nonce per seal.
        assert_ne!(key.seal("n", b"x"), key.seal("n", b"x"));
    }
}
