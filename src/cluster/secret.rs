//! The replicas' shared secret and the keys derived from it (HKDF-SHA256,
//! one label per use): what must be the same on every replica without
//! being stored anywhere but the environment.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;

/// The derived keys; the secret itself is not kept.
pub struct ClusterSecret {
    seal: LessSafeKey,
    reset: [u8; 32],
    token: [u8; 32],
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// The labels keys are derived under (changing one rotates that key).
const SEAL: &[u8] = b"h3gate cluster v1: stored state encryption";
const RESET: &[u8] = b"h3gate cluster v1: quic stateless reset";
const TOKEN: &[u8] = b"h3gate cluster v1: quic retry and new_token";

fn derive(prk: &hkdf::Prk, label: &[u8]) -> [u8; 32] {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    prk.expand(&[label], Len)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl ClusterSecret {
    pub fn new(secret: &[u8]) -> ClusterSecret {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"h3gate").extract(secret);
        let seal =
            UnboundKey::new(&AES_256_GCM, &derive(&prk, SEAL)).expect("32 bytes is an AES-256 key");
        ClusterSecret {
            seal: LessSafeKey::new(seal),
            reset: derive(&prk, RESET),
            token: derive(&prk, TOKEN),
        }
    }

    /// The QUIC stateless-reset HMAC key: the same on every replica, so a
    /// packet for a connection another replica holds gets a valid reset.
    pub fn reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.reset)
    }

    /// The QUIC Retry/NEW_TOKEN key: tokens one replica issues validate on
    /// every other.
    pub fn token_key(&self) -> ring::hkdf::Prk {
        ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, &self.token)
    }

    /// Encrypts `plain` for storage in Redis (AES-256-GCM, random nonce
    /// first); `context` (e.g. the Redis key) is authenticated with it, so
    /// a value moved to another key does not open.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        random_fill(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NONCE_LEN);
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .expect("AES-GCM seals any length the gateway stores");
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`ClusterSecret::seal`] made under the same `context`;
    /// `None` when it was changed, sealed under another key or context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(context), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

/// Nonces from the system's CSPRNG (ring's).
fn random_fill(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random source works");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_context() {
        let a = ClusterSecret::new(&[7u8; 32]);
        let b = ClusterSecret::new(&[8u8; 32]);
        let sealed = a.seal(b"ticket:1", b"resumption secret");
        assert!(!sealed.windows(10).any(|w| w == b"resumption"));
        assert_eq!(
            a.open(b"ticket:1", &sealed).as_deref(),
            Some(&b"resumption secret"[..])
        );
        assert_eq!(a.open(b"ticket:2", &sealed), None);
        assert_eq!(b.open(b"ticket:1", &sealed), None);
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(b"ticket:1", &changed), None);
    }

    #[test]
    fn replicas_with_one_secret_derive_the_same_keys() {
        let (a, b) = (
            ClusterSecret::new(&[1u8; 32]),
            ClusterSecret::new(&[1u8; 32]),
        );
        assert_eq!(a.reset, b.reset);
        assert_eq!(a.token, b.token);
        assert_ne!(a.reset, a.token);
    }
}
