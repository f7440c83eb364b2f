//! QUIC load balancing: connection IDs a CID-aware load balancer routes by,
//! and the keys replicas share so that a packet reaching the wrong one is
//! still answered correctly.
//!
//! With `[cluster] node_id`, every connection ID the endpoint issues (the
//! Source CID of its handshake packets, a Retry's, every NEW_CONNECTION_ID)
//! follows the unencrypted ("plaintext") mode of QUIC-LB
//! (draft-ietf-quic-load-balancers-21, sections 2 and 5):
//!
//! ```text
//! First Octet (8) = Config Rotation (3) | CID Len (5, the length after this octet)
//! Server ID (8 * server_id_len)         = node_id, big-endian
//! Nonce (8 * nonce_len)                 = random (a CSPRNG), nonce_len = min(8, 19 - server_id_len)
//! ```
//!
//! A balancer reads octets 2 ..= 1 + `server_id_len` of a packet's
//! Destination CID as the server id ([`decode`] is that reading, for
//! balancer authors and the tests). Codepoint `0b111` in the rotation bits
//! means "unroutable" and is never issued.
//!
//! With `[cluster] secret`, the stateless-reset key and the Retry/NEW_TOKEN
//! token key are derived from it ([`crate::cluster::ClusterSecret`]), so
//! every replica computes the same reset token for a CID and opens every
//! replica's tokens. Without a secret both are random per process, as in
//! quinn's defaults.

use std::sync::Arc;

use quinn::crypto::{HandshakeTokenKey, HmacKey};
use quinn::{ConnectionId, ConnectionIdGenerator};
// Not re-exported by quinn.
use quinn_proto::{HashedConnectionIdGenerator, InvalidCid};

use crate::cluster::ClusterSecret;
use crate::config::ClusterConfig;

/// The rotation codepoint reserved for unroutable connection IDs.
pub const UNROUTABLE: u8 = 0b111;
/// The QUIC-LB limits: a server id of 1 to 15 octets, a nonce of 4 or more,
/// both together at most 19 (a QUIC v1 connection ID is at most 20).
pub const MAX_SERVER_ID_LEN: u8 = 15;
pub const MIN_NONCE_LEN: usize = 4;
const MAX_PLAINTEXT_LEN: usize = 19;
/// Nonce octets when the server id leaves room: 2^64 random values, so
/// duplicates are negligible for the life of a process.
const PREFERRED_NONCE_LEN: usize = 8;

/// The length of the nonce for a server id of `server_id_len` octets.
pub fn nonce_len(server_id_len: u8) -> usize {
    PREFERRED_NONCE_LEN.min(MAX_PLAINTEXT_LEN - usize::from(server_id_len))
}

/// The length of every connection ID with a server id of `server_id_len` octets.
pub fn cid_len(server_id_len: u8) -> usize {
    1 + usize::from(server_id_len) + nonce_len(server_id_len)
}

/// One replica's QUIC-LB configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbConfig {
    node_id: u64,
    server_id_len: u8,
    config_rotation: u8,
}

impl LbConfig {
    /// Checks the draft's limits: a server id of 1 to 15 octets that holds
    /// `node_id`, a rotation codepoint of 0 to 6.
    pub fn new(node_id: u64, server_id_len: u8, config_rotation: u8) -> Result<LbConfig, String> {
        if !(1..=MAX_SERVER_ID_LEN).contains(&server_id_len) {
            return Err(format!("server_id_len {server_id_len} is not 1 to 15"));
        }
        if config_rotation >= UNROUTABLE {
            return Err(format!("config_rotation {config_rotation} is not 0 to 6"));
        }
        if server_id_len < 8 && node_id >> (8 * u32::from(server_id_len)) != 0 {
            return Err(format!(
                "node_id {node_id} does not fit in {server_id_len} bytes"
            ));
        }
        Ok(LbConfig {
            node_id,
            server_id_len,
            config_rotation,
        })
    }

    /// The configuration `[cluster]` asks for; `None` without `node_id`.
    pub fn from_cluster(c: &ClusterConfig) -> Option<Result<LbConfig, String>> {
        c.node_id
            .map(|id| LbConfig::new(id, c.server_id_len, c.config_rotation))
    }

    pub fn cid_len(&self) -> usize {
        cid_len(self.server_id_len)
    }

    /// The connection ID with `nonce` (what the generator passes is
    /// [`nonce_len`] random octets; any 4 to 19 − `server_id_len` encode):
    /// the first octet holds the rotation bits, then the length that
    /// follows it (self-encoded).
    pub fn encode(&self, nonce: &[u8]) -> ConnectionId {
        let sid = usize::from(self.server_id_len);
        assert!(
            (MIN_NONCE_LEN..=MAX_PLAINTEXT_LEN - sid).contains(&nonce.len()),
            "a QUIC-LB nonce is 4 to 19 - server_id_len octets"
        );
        let len = 1 + sid + nonce.len();
        let mut bytes = [0u8; 20];
        bytes[0] = (self.config_rotation << 5) | (len - 1) as u8;
        let id = self.node_id.to_be_bytes();
        // Right-aligned: a server id longer than 8 octets starts with zeros.
        let take = sid.min(8);
        bytes[1 + sid - take..1 + sid].copy_from_slice(&id[8 - take..]);
        bytes[1 + sid..len].copy_from_slice(nonce);
        ConnectionId::new(&bytes[..len])
    }

    /// Whether `cid` has the shape this configuration's IDs have (any node
    /// id): what lets a replica answer another's packets with a reset.
    fn well_formed(&self, cid: &[u8]) -> bool {
        cid.len() == self.cid_len()
            && cid[0] >> 5 != UNROUTABLE
            && usize::from(cid[0] & 0x1f) == cid.len() - 1
    }
}

/// What a balancer reads from a connection ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub config_rotation: u8,
    pub node_id: u64,
}

/// Reads the server id from `cid` under QUIC-LB's unencrypted mode with
/// `server_id_len`-octet server ids. `None` for an unroutable ID: rotation
/// `0b111`, shorter than a first octet, a server id and a 4-octet nonce, a
/// self-encoded length that is not the ID's, or a server id beyond 64 bits.
pub fn decode(cid: &[u8], server_id_len: u8) -> Option<Decoded> {
    let sid = usize::from(server_id_len);
    let first = *cid.first()?;
    if sid == 0 || cid.len() < 1 + sid + MIN_NONCE_LEN || first >> 5 == UNROUTABLE {
        return None;
    }
    if usize::from(first & 0x1f) != cid.len() - 1 {
        return None;
    }
    let id = &cid[1..1 + sid];
    let (high, low) = id.split_at(sid.saturating_sub(8));
    if high.iter().any(|&b| b != 0) {
        return None;
    }
    let node_id = low.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Some(Decoded {
        config_rotation: first >> 5,
        node_id,
    })
}

/// quinn's connection ID generator for [`LbConfig`].
struct LbCidGenerator(LbConfig);

impl ConnectionIdGenerator for LbCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut nonce = [0u8; PREFERRED_NONCE_LEN];
        let nonce = &mut nonce[..nonce_len(self.0.server_id_len)];
        fill_random(nonce);
        self.0.encode(nonce)
    }

    /// Packets for unknown connections with a well-formed ID (this
    /// replica's or another's) get a stateless reset; anything else is
    /// dropped.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if self.0.well_formed(cid) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.0.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

fn fill_random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random source works");
}

/// The keys and the connection ID scheme every endpoint of this process
/// uses, fixed for its life: an endpoint's reset key and CID generator
/// cannot change while it runs, and the token key is kept across reloads
/// so the tokens already issued stay valid.
#[derive(Clone)]
pub struct QuicKeys {
    reset: Arc<dyn HmacKey>,
    token: Arc<dyn HandshakeTokenKey>,
    cids: Cids,
}

#[derive(Clone, Copy)]
enum Cids {
    /// quinn's default: 8 random-looking octets, validated with a random key.
    Random,
    /// quinn's hashed IDs under a key from the shared secret, so that every
    /// replica recognises (and resets) the others' IDs.
    Hashed(u64),
    LoadBalanced(LbConfig),
}

impl Default for QuicKeys {
    /// Random keys, random connection IDs: one gateway on its own.
    fn default() -> Self {
        let mut reset = [0u8; 64];
        let mut token = [0u8; 64];
        fill_random(&mut reset);
        fill_random(&mut token);
        QuicKeys {
            reset: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset)),
            token: Arc::new(ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token)),
            cids: Cids::Random,
        }
    }
}

impl QuicKeys {
    /// What `[cluster]` asks for: the shared keys with `secret`, QUIC-LB
    /// connection IDs with `node_id`.
    pub fn from_cluster(c: &ClusterConfig) -> Result<QuicKeys, String> {
        let mut keys = QuicKeys::default();
        if let Some(secret) = c
            .secret_bytes()
            .map_err(|e| format!("cluster.secret {e}"))?
        {
            let secret = ClusterSecret::new(&secret);
            let reset = secret.reset_key();
            let tag = ring::hmac::sign(&reset, b"h3gate quic connection id validation");
            let mut hash_key = [0u8; 8];
            hash_key.copy_from_slice(&tag.as_ref()[..8]);
            keys.cids = Cids::Hashed(u64::from_le_bytes(hash_key));
            keys.reset = Arc::new(reset);
            keys.token = Arc::new(secret.token_key());
        }
        if let Some(lb) = LbConfig::from_cluster(c) {
            keys.cids = Cids::LoadBalanced(lb.map_err(|e| format!("cluster: {e}"))?);
        }
        Ok(keys)
    }

    /// Says at start what the replicas' balancer and peers can rely on.
    pub fn log(&self, c: &ClusterConfig) {
        let shared = !c.secret.is_empty();
        match self.cids {
            Cids::LoadBalanced(lb) => tracing::info!(
                node_id = lb.node_id,
                server_id_len = lb.server_id_len,
                config_rotation = lb.config_rotation,
                cid_len = lb.cid_len(),
                shared_keys = shared,
                "QUIC connection IDs carry this node id (QUIC-LB, unencrypted)"
            ),
            Cids::Hashed(_) | Cids::Random => tracing::info!(
                shared_keys = shared,
                "QUIC connection IDs are random (no [cluster] node_id)"
            ),
        }
        if c.node_id.is_some() && !shared {
            tracing::warn!(
                "[cluster] node_id without [cluster] secret: a packet that reaches another replica gets no valid stateless reset and tokens validate only here; set the same secret on every replica"
            );
        }
    }

    /// The endpoint configuration: the reset key and the CID generator.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(self.reset.clone());
        match self.cids {
            Cids::Random => {}
            Cids::Hashed(key) => {
                config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(key)));
            }
            Cids::LoadBalanced(lb) => {
                config.cid_generator(move || Box::new(LbCidGenerator(lb)));
            }
        }
        config
    }

    /// The key Retry and NEW_TOKEN tokens are sealed with.
    pub fn token_key(&self) -> Arc<dyn HandshakeTokenKey> {
        self.token.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_drafts_unencrypted_test_vector() {
        // draft-ietf-quic-load-balancers-21, appendix B ("Unencrypted
        // CIDs"), the vector with cr_bits 0: server id c4605e, nonce
        // 4504cc4f, the length self-encoded.
        let lb = LbConfig::new(0xc4605e, 3, 0).unwrap();
        let vector = hex("07c4605e4504cc4f");
        assert_eq!(&lb.encode(&hex("4504cc4f"))[..], &vector[..]);
        assert_eq!(
            decode(&vector, 3),
            Some(Decoded {
                config_rotation: 0,
                node_id: 0xc4605e
            })
        );
    }

    #[test]
    fn every_length_and_rotation_round_trips() {
        for sid in 1..=MAX_SERVER_ID_LEN {
            for rotation in 0..UNROUTABLE {
                let max = if sid >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * u32::from(sid))) - 1
                };
                for node in [0, 1, max / 3, max] {
                    let lb = LbConfig::new(node, sid, rotation).unwrap();
                    let mut g = LbCidGenerator(lb);
                    let cid = g.generate_cid();
                    assert_eq!(cid.len(), cid_len(sid));
                    assert!(cid.len() <= 20 && nonce_len(sid) >= MIN_NONCE_LEN);
                    assert_eq!(usize::from(cid[0] & 0x1f), cid.len() - 1, "self-encoded");
                    assert_eq!(cid[0] >> 5, rotation);
                    assert_eq!(
                        decode(&cid, sid),
                        Some(Decoded {
                            config_rotation: rotation,
                            node_id: node
                        }),
                        "sid {sid} rotation {rotation} node {node}"
                    );
                    assert!(g.validate(&cid).is_ok());
                }
            }
        }
    }

    #[test]
    fn nonces_are_random_and_ids_distinct() {
        let mut g = LbCidGenerator(LbConfig::new(7, 2, 1).unwrap());
        let ids: std::collections::HashSet<Vec<u8>> =
            (0..1000).map(|_| g.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 1000);
        // Every nonce octet varies (not a counter, not zeros).
        for i in 3..cid_len(2) {
            let values: std::collections::HashSet<u8> = ids.iter().map(|c| c[i]).collect();
            assert!(values.len() > 100, "octet {i} looks fixed");
        }
    }

    #[test]
    fn the_reserved_codepoint_and_malformed_ids_are_unroutable() {
        let lb = LbConfig::new(0x1234, 2, 0).unwrap();
        let good = lb.encode(&[9; 8]);
        let mut unroutable = good.to_vec();
        unroutable[0] = (UNROUTABLE << 5) | (unroutable[0] & 0x1f);
        assert_eq!(decode(&unroutable, 2), None);
        let mut wrong_len = good.to_vec();
        wrong_len[0] ^= 1;
        assert_eq!(decode(&wrong_len, 2), None);
        assert_eq!(decode(&good[..6], 2), None, "no room for a 4-octet nonce");
        assert_eq!(decode(&[], 2), None);
        assert_eq!(decode(&good, 0), None);
        let g = LbCidGenerator(lb);
        for bad in [&unroutable[..], &wrong_len[..], &good[..10]] {
            assert!(g.validate(&ConnectionId::new(bad)).is_err());
        }
        // Another replica's ID validates: it gets a stateless reset.
        let other = LbConfig::new(0x9999, 2, 0).unwrap().encode(&[1; 8]);
        assert!(g.validate(&other).is_ok());
        // A server id beyond 64 bits is not a node id.
        let mut wide = LbConfig::new(5, 12, 0).unwrap().encode(&[2; 7]).to_vec();
        assert_eq!(decode(&wide, 12).map(|d| d.node_id), Some(5));
        wide[1] = 1;
        assert_eq!(decode(&wide, 12), None);
    }

    #[test]
    fn configurations_outside_the_draft_are_refused() {
        assert!(LbConfig::new(1, 0, 0).is_err());
        assert!(LbConfig::new(1, 16, 0).is_err());
        assert!(LbConfig::new(1, 2, UNROUTABLE).is_err());
        assert!(LbConfig::new(0x1_0000, 2, 0).is_err());
        assert!(LbConfig::new(u64::MAX, 8, 6).is_ok());
    }

    #[test]
    fn one_secret_gives_every_replica_the_same_keys() {
        let cluster = |secret: &str| ClusterConfig {
            secret: crate::config::Secret::new(secret),
            ..ClusterConfig::default()
        };
        let a = QuicKeys::from_cluster(&cluster(&"ab".repeat(32))).unwrap();
        let b = QuicKeys::from_cluster(&cluster(&"ab".repeat(32))).unwrap();
        let c = QuicKeys::from_cluster(&cluster(&"cd".repeat(32))).unwrap();
        let sign = |k: &QuicKeys| {
            let mut out = [0u8; 32];
            k.reset.sign(b"a connection id", &mut out);
            out
        };
        assert_eq!(sign(&a), sign(&b));
        assert_ne!(sign(&a), sign(&c));
        assert_ne!(
            sign(&QuicKeys::default()),
            sign(&QuicKeys::default()),
            "random without a secret"
        );
        let (Cids::Hashed(ka), Cids::Hashed(kb)) = (a.cids, b.cids) else {
            panic!("hashed connection ids with a secret");
        };
        assert_eq!(ka, kb);
    }
}
