//! The manager ↔ agent protocol, defined once (docs/protocol.md describes it
//! and a test keeps the two in step).
//!
//! Every message travels as an [`Envelope`]: the exact payload bytes, the
//! Ed25519 public key of the signer and its signature over those bytes. A
//! receiver checks the size, that the key is one it trusts and the signature,
//! and only then parses the payload ("verify first, parse second"). A command
//! is bound to a cluster, a target node, its issuer's key, a sequence number
//! that must grow for each issuer, and an expiry at most a minute ahead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// The largest envelope an agent reads; anything bigger is refused unread.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// The furthest into the future a command may expire.
pub const MAX_EXPIRY_SECS: u64 = 60;
/// Tolerated clock difference between a manager and an agent.
pub const CLOCK_SKEW_SECS: u64 = 5;
/// The most rewrites one set may hold (a swarm has at most a few dozen managers).
pub const MAX_REWRITES: usize = 256;

/// An Ed25519 public key (32 bytes), written in base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(PublicKey)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Option<Self> {
        B64.decode(s.trim()).ok().and_then(|b| Self::from_bytes(&b))
    }

    /// A short, loggable name: the first 12 base64 characters.
    pub fn short(&self) -> String {
        self.to_base64().chars().take(12).collect()
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_base64(&s)
            .ok_or_else(|| serde::de::Error::custom("not a base64 Ed25519 public key"))
    }
}

/// An Ed25519 signing key. Its bytes are never printed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().short())
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(SigningKey {
            pair,
            pkcs8: bytes.to_vec(),
        })
    }

    /// The PKCS#8 document to store (0600) and load with [`Self::from_pkcs8`].
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::from_bytes(self.pair.public_key().as_ref()).unwrap_or(PublicKey([0; 32]))
    }

    /// Signs `payload` as it is and wraps it in an envelope.
    pub fn seal(&self, payload: Vec<u8>) -> Envelope {
        let sig = self.pair.sign(&payload);
        Envelope {
            key: self.public(),
            payload: B64.encode(&payload),
            sig: B64.encode(sig.as_ref()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system random generator failed to make an Ed25519 key")]
    Generate,
    #[error("not an Ed25519 PKCS#8 key: {0}")]
    Invalid(String),
}

/// What travels on the wire, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The signer's public key.
    pub key: PublicKey,
    /// The payload bytes, base64: exactly what was signed.
    pub payload: String,
    /// Ed25519 signature over the payload bytes, base64.
    pub sig: String,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks size, trust and signature; returns the signer and the verified
    /// payload bytes, which have not been parsed yet.
    pub fn open(bytes: &[u8], trusted: &TrustSet) -> Result<(PublicKey, Vec<u8>), Refusal> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Refusal::new(
                RefusalCode::Oversized,
                format!(
                    "envelope is {} bytes, the limit is {MAX_ENVELOPE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
            Refusal::new(
                RefusalCode::Malformed,
                format!("envelope is not valid: {e}"),
            )
        })?;
        if !trusted.contains(&env.key) {
            return Err(Refusal::new(
                RefusalCode::UntrustedKey,
                format!("key {} is not in the trust directory", env.key.short()),
            ));
        }
        let payload = B64.decode(&env.payload).map_err(|e| {
            Refusal::new(
                RefusalCode::Malformed,
                format!("payload is not base64: {e}"),
            )
        })?;
        let sig = B64.decode(&env.sig).map_err(|e| {
            Refusal::new(
                RefusalCode::Malformed,
                format!("signature is not base64: {e}"),
            )
        })?;
        if !env.key.verify(&payload, &sig) {
            return Err(Refusal::new(
                RefusalCode::BadSignature,
                format!(
                    "signature does not match the payload for key {}",
                    env.key.short()
                ),
            ));
        }
        Ok((env.key, payload))
    }
}

/// The manager keys an agent obeys (or the agent keys a manager has pinned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSet(BTreeSet<PublicKey>);

impl TrustSet {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        TrustSet(keys.into_iter().collect())
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }
}

/// One address rewrite: traffic to `from` goes to `to` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
}

/// A command from a manager to one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub v: u32,
    /// The swarm's cluster ID.
    pub cluster: String,
    /// The node ID of the agent this command is for.
    pub target: String,
    /// The issuer's key; must be the key that signed the envelope.
    pub issuer: PublicKey,
    /// Grows with every command of this issuer; an agent accepts each number once.
    pub seq: u64,
    /// Unix time (seconds) after which the command is void.
    pub expires: u64,
    pub body: CommandBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandBody {
    /// The complete set of rewrites the node must have (desired state).
    SetRewrites {
        generation: u64,
        rewrites: Vec<Rewrite>,
        /// The generation the issuer read from this agent before it chose
        /// the set: if another set came in force since, this one is refused
        /// (`stale_generation`) rather than put over what it did not see.
        /// Absent: no such condition.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<u64>,
    },
    /// Report what is in force.
    Status,
    /// A command of a newer protocol this agent does not know.
    #[serde(other)]
    Unsupported,
}

impl CommandBody {
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::SetRewrites { .. } => "set_rewrites",
            CommandBody::Status => "status",
            CommandBody::Unsupported => "unsupported",
        }
    }
}

/// Why a command was refused. Stable names: managers and logs match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    Oversized,
    Malformed,
    UntrustedKey,
    BadSignature,
    UnsupportedVersion,
    IssuerMismatch,
    WrongCluster,
    WrongTarget,
    Expired,
    ExpiryTooFar,
    Replayed,
    StaleGeneration,
    InvalidRewrites,
    UnsupportedCommand,
    NotEnrolled,
    Internal,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 16] = [
        RefusalCode::Oversized,
        RefusalCode::Malformed,
        RefusalCode::UntrustedKey,
        RefusalCode::BadSignature,
        RefusalCode::UnsupportedVersion,
        RefusalCode::IssuerMismatch,
        RefusalCode::WrongCluster,
        RefusalCode::WrongTarget,
        RefusalCode::Expired,
        RefusalCode::ExpiryTooFar,
        RefusalCode::Replayed,
        RefusalCode::StaleGeneration,
        RefusalCode::InvalidRewrites,
        RefusalCode::UnsupportedCommand,
        RefusalCode::NotEnrolled,
        RefusalCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Oversized => "oversized",
            RefusalCode::Malformed => "malformed",
            RefusalCode::UntrustedKey => "untrusted_key",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::UnsupportedVersion => "unsupported_version",
            RefusalCode::IssuerMismatch => "issuer_mismatch",
            RefusalCode::WrongCluster => "wrong_cluster",
            RefusalCode::WrongTarget => "wrong_target",
            RefusalCode::Expired => "expired",
            RefusalCode::ExpiryTooFar => "expiry_too_far",
            RefusalCode::Replayed => "replayed",
            RefusalCode::StaleGeneration => "stale_generation",
            RefusalCode::InvalidRewrites => "invalid_rewrites",
            RefusalCode::UnsupportedCommand => "unsupported_command",
            RefusalCode::NotEnrolled => "not_enrolled",
            RefusalCode::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {reason}", code.as_str())]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// What the receiving agent knows about itself and its issuers.
#[derive(Clone, Copy)]
pub struct CommandContext<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub trusted: &'a TrustSet,
    /// Unix time now, in seconds.
    pub now: u64,
    /// The highest sequence already accepted from an issuer (0 if none).
    pub last_seq: &'a dyn Fn(&PublicKey) -> u64,
}

/// Opens and checks a command envelope; nothing is changed by this call.
pub fn open_command(bytes: &[u8], ctx: &CommandContext<'_>) -> Result<Command, Refusal> {
    let (signer, payload) = Envelope::open(bytes, ctx.trusted)?;
    let cmd = parse_payload(&payload)?;
    check_addressed(&cmd, &signer, ctx)?;
    check_fresh(&cmd, &signer, ctx)?;
    match &cmd.body {
        CommandBody::SetRewrites { rewrites, .. } => check_rewrites(rewrites)?,
        CommandBody::Status => {}
        CommandBody::Unsupported => {
            return Err(Refusal::new(
                RefusalCode::UnsupportedCommand,
                "this agent does not know that command",
            ))
        }
    }
    Ok(cmd)
}

/// The command in an authentic payload. A newer protocol version may not
/// be parseable, so the version is looked at first.
fn parse_payload(payload: &[u8]) -> Result<Command, Refusal> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let versioned: Versioned = serde_json::from_slice(payload).map_err(|e| {
        Refusal::new(
            RefusalCode::Malformed,
            format!("command payload has no version: {e}"),
        )
    })?;
    if versioned.v != VERSION {
        return Err(Refusal::new(
            RefusalCode::UnsupportedVersion,
            format!(
                "protocol version {} (this agent speaks {VERSION})",
                versioned.v
            ),
        ));
    }
    serde_json::from_slice(payload).map_err(|e| {
        Refusal::new(
            RefusalCode::Malformed,
            format!("command payload is not valid: {e}"),
        )
    })
}

/// The command names its signer as issuer, and this node of this cluster.
fn check_addressed(
    cmd: &Command,
    signer: &PublicKey,
    ctx: &CommandContext<'_>,
) -> Result<(), Refusal> {
    if cmd.issuer != *signer {
        return Err(Refusal::new(
            RefusalCode::IssuerMismatch,
            format!(
                "command names issuer {} but was signed by {}",
                cmd.issuer.short(),
                signer.short()
            ),
        ));
    }
    if cmd.cluster != ctx.cluster {
        return Err(Refusal::new(
            RefusalCode::WrongCluster,
            format!(
                "command is for cluster {}, this node is in {}",
                cmd.cluster, ctx.cluster
            ),
        ));
    }
    if cmd.target != ctx.node {
        return Err(Refusal::new(
            RefusalCode::WrongTarget,
            format!("command is for node {}, this is {}", cmd.target, ctx.node),
        ));
    }
    Ok(())
}

/// The command has not expired, does not expire too far ahead, and its
/// sequence is above the last one accepted from its signer.
fn check_fresh(cmd: &Command, signer: &PublicKey, ctx: &CommandContext<'_>) -> Result<(), Refusal> {
    if cmd.expires + CLOCK_SKEW_SECS < ctx.now {
        return Err(Refusal::new(
            RefusalCode::Expired,
            format!("command expired {} s ago", ctx.now - cmd.expires),
        ));
    }
    if cmd.expires > ctx.now + MAX_EXPIRY_SECS + CLOCK_SKEW_SECS {
        return Err(Refusal::new(
            RefusalCode::ExpiryTooFar,
            format!(
                "command expires in {} s, more than the allowed {MAX_EXPIRY_SECS} s",
                cmd.expires - ctx.now
            ),
        ));
    }
    let last = (ctx.last_seq)(signer);
    if cmd.seq <= last {
        return Err(Refusal::new(
            RefusalCode::Replayed,
            format!(
                "sequence {} from {} is not above the last accepted {last}",
                cmd.seq,
                signer.short()
            ),
        ));
    }
    Ok(())
}

/// A rewrite set must be a function from old to new unicast addresses.
pub fn check_rewrites(rewrites: &[Rewrite]) -> Result<(), Refusal> {
    let bad = |reason: String| Err(Refusal::new(RefusalCode::InvalidRewrites, reason));
    if rewrites.len() > MAX_REWRITES {
        return bad(format!(
            "{} rewrites, at most {MAX_REWRITES}",
            rewrites.len()
        ));
    }
    let mut froms = BTreeSet::new();
    for r in rewrites {
        for a in [r.from, r.to] {
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
                return bad(format!(
                    "{a} cannot be rewritten (not a unicast host address)"
                ));
            }
        }
        if r.from == r.to {
            return bad(format!("{} is rewritten to itself", r.from));
        }
        if !froms.insert(r.from) {
            return bad(format!("{} is rewritten twice", r.from));
        }
    }
    Ok(())
}

/// An agent's answer, signed with the agent's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub v: u32,
    /// The agent's node ID and cluster (empty when not enrolled).
    pub node: String,
    pub cluster: String,
    /// The sequence of the command answered (0 when it could not be read).
    pub in_reply_to: u64,
    /// Unix time of the answer.
    pub at: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Applied { status: AgentStatus },
    Status { status: AgentStatus },
    Refused { refusal: Refusal },
}

/// What an agent has in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_version: String,
    pub generation: u64,
    pub rewrites: Vec<Rewrite>,
    /// True when the rules in the kernel match the desired set.
    pub in_force: bool,
    pub trusted_keys: usize,
    /// The addresses this node's dockerd holds, as last read (absent from
    /// older agents, and until the first reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerd: Option<DockerdAddrs>,
}

/// What the agent last read of its node's dockerd (see `dockerd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerdAddrs {
    /// When it was read, the agent's Unix time in milliseconds.
    pub read_ms: u64,
    /// `Swarm.NodeAddr`: the address dockerd gossips and tunnels from,
    /// fixed when it started (empty: not in a swarm).
    pub node_addr: String,
    /// The address fields `docker-state.json` sets (`AdvertiseAddr`,
    /// `DataPathAddr`, `ListenAddr`, `LocalAddr`), as written there.
    pub state: BTreeMap<String, String>,
    /// Why dockerd could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn seal(&self, key: &SigningKey) -> Envelope {
        key.seal(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Opens a reply from an agent whose key is pinned in `agents`.
    pub fn open(bytes: &[u8], agents: &TrustSet) -> Result<(PublicKey, Reply), Refusal> {
        let (signer, payload) = Envelope::open(bytes, agents)?;
        let reply = serde_json::from_slice(&payload).map_err(|e| {
            Refusal::new(
                RefusalCode::Malformed,
                format!("reply payload is not valid: {e}"),
            )
        })?;
        Ok((signer, reply))
    }
}

impl Command {
    pub fn seal(&self, key: &SigningKey) -> Envelope {
        key.seal(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::generate().expect("key")
    }

    fn command(issuer: &SigningKey, seq: u64) -> Command {
        Command {
            v: VERSION,
            cluster: "cluster-1".into(),
            target: "node-1".into(),
            issuer: issuer.public(),
            seq,
            expires: NOW + 30,
            body: CommandBody::SetRewrites {
                generation: 3,
                rewrites: vec![Rewrite {
                    from: Ipv4Addr::new(10, 1, 0, 11),
                    to: Ipv4Addr::new(10, 2, 0, 87),
                }],
                replaces: None,
            },
        }
    }

    fn open(bytes: &[u8], trusted: &TrustSet, last: u64) -> Result<Command, Refusal> {
        let last_seq = move |_: &PublicKey| last;
        open_command(
            bytes,
            &CommandContext {
                cluster: "cluster-1",
                node: "node-1",
                trusted,
                now: NOW,
                last_seq: &last_seq,
            },
        )
    }

    fn code(r: Result<Command, Refusal>) -> RefusalCode {
        r.expect_err("must be refused").code
    }

    #[test]
    fn a_signed_command_from_a_trusted_key_opens() {
        let k = key();
        let trusted = TrustSet::new([k.public()]);
        let cmd = command(&k, 5);
        let got = open(&cmd.seal(&k).to_bytes(), &trusted, 4).expect("opens");
        assert_eq!(got, cmd);
    }

    #[test]
    fn every_bad_command_is_refused_with_its_reason() {
        let k = key();
        let other = key();
        let trusted = TrustSet::new([k.public()]);
        let good = command(&k, 5);

        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(code(open(&big, &trusted, 0)), RefusalCode::Oversized);
        assert_eq!(
            code(open(b"{not json", &trusted, 0)),
            RefusalCode::Malformed
        );
        let bytes = good.seal(&k).to_bytes();
        assert_eq!(
            code(open(&bytes[..bytes.len() / 2], &trusted, 0)),
            RefusalCode::Malformed
        );
        assert_eq!(
            code(open(
                &command(&other, 5).seal(&other).to_bytes(),
                &trusted,
                0
            )),
            RefusalCode::UntrustedKey
        );

        let mut unsigned = good.seal(&k);
        unsigned.sig = String::new();
        assert_eq!(
            code(open(&unsigned.to_bytes(), &trusted, 0)),
            RefusalCode::BadSignature
        );

        let mut tampered = good.seal(&k);
        let mut evil = good.clone();
        evil.target = "node-2".into();
        tampered.payload = B64.encode(serde_json::to_vec(&evil).expect("json"));
        assert_eq!(
            code(open(&tampered.to_bytes(), &trusted, 0)),
            RefusalCode::BadSignature
        );

        // Signed by a trusted key, but claiming another issuer.
        let mut mismatch = good.clone();
        mismatch.issuer = other.public();
        assert_eq!(
            code(open(&mismatch.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::IssuerMismatch
        );

        let mut c = good.clone();
        c.cluster = "cluster-2".into();
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::WrongCluster
        );
        let mut c = good.clone();
        c.target = "node-9".into();
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::WrongTarget
        );
        let mut c = good.clone();
        c.expires = NOW - 60;
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::Expired
        );
        let mut c = good.clone();
        c.expires = NOW + 3600;
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::ExpiryTooFar
        );
        assert_eq!(code(open(&bytes, &trusted, 5)), RefusalCode::Replayed);
        assert_eq!(code(open(&bytes, &trusted, 9)), RefusalCode::Replayed);

        let mut c = good.clone();
        c.v = 2;
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::UnsupportedVersion
        );
        let mut c = good;
        c.body = CommandBody::SetRewrites {
            generation: 1,
            rewrites: vec![Rewrite {
                from: Ipv4Addr::new(10, 1, 0, 1),
                to: Ipv4Addr::new(10, 1, 0, 1),
            }],
            replaces: None,
        };
        assert_eq!(
            code(open(&c.seal(&k).to_bytes(), &trusted, 0)),
            RefusalCode::InvalidRewrites
        );
    }

    #[test]
    fn an_unknown_command_of_this_version_is_refused_not_misread() {
        let k = key();
        let trusted = TrustSet::new([k.public()]);
        let mut json = serde_json::to_value(command(&k, 1)).expect("json");
        json["body"] = serde_json::json!({"type": "reboot_everything"});
        let env = k.seal(serde_json::to_vec(&json).expect("json"));
        assert_eq!(
            code(open(&env.to_bytes(), &trusted, 0)),
            RefusalCode::UnsupportedCommand
        );
    }

    #[test]
    fn rewrite_sets_must_be_functions_of_unicast_addresses() {
        let r = |f: [u8; 4], t: [u8; 4]| Rewrite {
            from: Ipv4Addr::from(f),
            to: Ipv4Addr::from(t),
        };
        assert!(check_rewrites(&[r([10, 0, 1, 1], [10, 0, 2, 1])]).is_ok());
        assert!(check_rewrites(&[]).is_ok());
        assert!(check_rewrites(&[
            r([10, 0, 1, 1], [10, 0, 2, 1]),
            r([10, 0, 1, 1], [10, 0, 2, 2])
        ])
        .is_err());
        assert!(check_rewrites(&[r([127, 0, 0, 1], [10, 0, 2, 1])]).is_err());
        assert!(check_rewrites(&[r([10, 0, 1, 1], [224, 0, 0, 251])]).is_err());
        assert!(check_rewrites(&[r([0, 0, 0, 0], [10, 0, 2, 1])]).is_err());
        let many: Vec<Rewrite> = (0..=MAX_REWRITES as u32)
            .map(|i| Rewrite {
                from: Ipv4Addr::from(0x0a00_0000 + i + 1),
                to: Ipv4Addr::from(0x0b00_0000 + i + 1),
            })
            .collect();
        assert!(check_rewrites(&many).is_err());
    }

    #[test]
    fn replies_are_signed_by_the_agent_and_checked_against_the_pinned_key() {
        let agent = key();
        let impostor = key();
        let pinned = TrustSet::new([agent.public()]);
        let reply = Reply {
            v: VERSION,
            node: "node-1".into(),
            cluster: "cluster-1".into(),
            in_reply_to: 7,
            at: NOW,
            outcome: Outcome::Status {
                status: AgentStatus {
                    agent_version: "0.1.0".into(),
                    generation: 3,
                    rewrites: vec![],
                    in_force: true,
                    trusted_keys: 3,
                    dockerd: None,
                },
            },
        };
        let (signer, got) = Reply::open(&reply.seal(&agent).to_bytes(), &pinned).expect("opens");
        assert_eq!(signer, agent.public());
        assert_eq!(got, reply);
        let err = Reply::open(&reply.seal(&impostor).to_bytes(), &pinned).expect_err("impostor");
        assert_eq!(err.code, RefusalCode::UntrustedKey);
    }

    #[test]
    fn keys_round_trip_through_pkcs8_and_base64() {
        let k = key();
        let again = SigningKey::from_pkcs8(k.pkcs8()).expect("pkcs8");
        assert_eq!(again.public(), k.public());
        assert_eq!(
            PublicKey::from_base64(&k.public().to_base64()),
            Some(k.public())
        );
        assert!(PublicKey::from_base64("AAAA").is_none());
        assert!(!format!("{k:?}").contains(&B64.encode(k.pkcs8())));
    }
}
