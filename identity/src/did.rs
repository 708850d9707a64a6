//! Decentralized identifiers: what a DID string may be and how it reads.
//!
//! Accepted shapes, for the methods `tenzro` and `pdis` alike:
//! - `did:{method}:human:{uuid}`: a person.
//! - `did:{method}:machine:{uuid}`: an autonomous agent or machine (a provider's DID
//!   is this shape, see [`key_uuid`]).
//! - `did:{method}:machine:{controller}:{uuid}`: an agent controlled by another
//!   identity; `{controller}` is itself a whole DID of any accepted shape and method,
//!   for example `did:tenzro:machine:did:tenzro:human:{uuid}:{uuid}`.
//!
//! A UUID is written lowercase and hyphenated (36 characters), so every DID has one
//! spelling and parsing then printing gives back the same string. Controllers nest
//! at most [`MAX_CONTROLLER_DEPTH`] deep and a DID is at most [`MAX_LEN`] bytes.
//! DID URLs (`#fragment`, `?query`, `/path`) are not DIDs and are refused.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tenzro_attest::PublicKey;
use uuid::Uuid;

/// The longest DID accepted, in bytes.
pub const MAX_LEN: usize = 1024;

/// How many controllers a controlled DID may nest (a human's agent's agent is 2).
pub const MAX_CONTROLLER_DEPTH: usize = 8;

/// The DID method: the second segment of the DID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// `did:tenzro:...`, the identities this crate registers.
    Tenzro,
    /// `did:pdis:...`, the same shapes under the PDIS method.
    Pdis,
}

impl Method {
    /// The method name as written in a DID.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenzro => "tenzro",
            Self::Pdis => "pdis",
        }
    }
}

/// What a DID names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DidKind {
    /// `human:{uuid}`.
    Human(Uuid),
    /// `machine:{uuid}`: an autonomous agent or machine.
    Machine(Uuid),
    /// `machine:{controller}:{uuid}`: an agent acting for its controller.
    Controlled {
        /// The controlling identity.
        controller: Box<Did>,
        /// The agent's own UUID.
        id: Uuid,
    },
}

/// A parsed DID. Text form (`Display`, `FromStr`, serde): the DID string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Did {
    method: Method,
    kind: DidKind,
}

/// Why a string is not a DID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid DID {input:?}: {reason}")]
pub struct DidError {
    /// The offending input, cut to its first 100 characters.
    pub input: String,
    /// What is wrong with it.
    pub reason: DidErrorReason,
}

/// What is wrong with a DID string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DidErrorReason {
    /// Longer than [`MAX_LEN`].
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    /// Does not start with `did:`.
    #[error("does not start with \"did:\"")]
    Scheme,
    /// The method is not `tenzro` or `pdis`.
    #[error("unknown method (expected \"tenzro\" or \"pdis\")")]
    Method,
    /// The kind is not `human` or `machine`.
    #[error("unknown kind (expected \"human\" or \"machine\")")]
    Kind,
    /// The identifier is not a lowercase hyphenated UUID.
    #[error("identifier is not a lowercase hyphenated UUID")]
    Uuid,
    /// A human DID with more than a UUID after `human:`.
    #[error("a human DID has no controller (expected did:METHOD:human:UUID)")]
    ControlledHuman,
    /// Controllers nested deeper than [`MAX_CONTROLLER_DEPTH`].
    #[error("controllers nested deeper than {MAX_CONTROLLER_DEPTH}")]
    TooDeep,
}

impl Did {
    /// Builds a DID, checking the nesting depth of controllers.
    pub fn new(method: Method, kind: DidKind) -> Result<Self, DidError> {
        let did = Self { method, kind };
        if did.depth() > MAX_CONTROLLER_DEPTH {
            return Err(DidError::new(&did.to_string(), DidErrorReason::TooDeep));
        }
        Ok(did)
    }

    /// `did:tenzro:human:{id}`.
    pub fn human(id: Uuid) -> Self {
        Self {
            method: Method::Tenzro,
            kind: DidKind::Human(id),
        }
    }

    /// `did:tenzro:machine:{id}`.
    pub fn machine(id: Uuid) -> Self {
        Self {
            method: Method::Tenzro,
            kind: DidKind::Machine(id),
        }
    }

    /// `did:tenzro:machine:{controller}:{id}`.
    pub fn controlled(controller: Did, id: Uuid) -> Result<Self, DidError> {
        Self::new(
            Method::Tenzro,
            DidKind::Controlled {
                controller: Box::new(controller),
                id,
            },
        )
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// What the DID names.
    pub fn kind(&self) -> &DidKind {
        &self.kind
    }

    /// The DID's own UUID (the last segment).
    pub fn uuid(&self) -> Uuid {
        match &self.kind {
            DidKind::Human(id) | DidKind::Machine(id) | DidKind::Controlled { id, .. } => *id,
        }
    }

    /// The controlling DID, for a controlled agent.
    pub fn controller(&self) -> Option<&Did> {
        match &self.kind {
            DidKind::Controlled { controller, .. } => Some(controller),
            DidKind::Human(_) | DidKind::Machine(_) => None,
        }
    }

    /// Whether it names a human.
    pub fn is_human(&self) -> bool {
        matches!(self.kind, DidKind::Human(_))
    }

    /// Whether it names a machine or agent, controlled or not.
    pub fn is_machine(&self) -> bool {
        !self.is_human()
    }

    /// How many controllers are nested in it (0 for humans and autonomous machines).
    pub fn depth(&self) -> usize {
        let mut depth = 0;
        let mut next = self.controller();
        while let Some(controller) = next {
            depth += 1;
            next = controller.controller();
        }
        depth
    }

    /// `{did}#key-1`: the id of the DID's one verification method.
    pub fn key_id(&self) -> String {
        format!("{self}#key-1")
    }
}

/// The UUID of a key's DIDs: the first 16 bytes of SHA-256 of the 32 public-key bytes,
/// marked as a custom (version 8) UUID. The same rule as
/// [`tenzro_attest::PublicKey::did`], so a provider's registered machine DID is the
/// DID its key already has.
pub fn key_uuid(key: &PublicKey) -> Uuid {
    let digest = tenzro_attest::sha256(&key.to_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(first).into_uuid()
}

impl DidError {
    fn new(input: &str, reason: DidErrorReason) -> Self {
        Self {
            input: input.chars().take(100).collect(),
            reason,
        }
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = self.method.as_str();
        match &self.kind {
            DidKind::Human(id) => write!(f, "did:{method}:human:{}", id.hyphenated()),
            DidKind::Machine(id) => write!(f, "did:{method}:machine:{}", id.hyphenated()),
            DidKind::Controlled { controller, id } => {
                write!(f, "did:{method}:machine:{controller}:{}", id.hyphenated())
            }
        }
    }
}

impl FromStr for Did {
    type Err = DidError;

    fn from_str(s: &str) -> Result<Self, DidError> {
        if s.len() > MAX_LEN {
            return Err(DidError::new(s, DidErrorReason::TooLong));
        }
        parse(s, 0).map_err(|reason| DidError::new(s, reason))
    }
}

fn parse(s: &str, depth: usize) -> Result<Did, DidErrorReason> {
    let rest = s.strip_prefix("did:").ok_or(DidErrorReason::Scheme)?;
    let (method, rest) = rest.split_once(':').ok_or(DidErrorReason::Method)?;
    let method = match method {
        "tenzro" => Method::Tenzro,
        "pdis" => Method::Pdis,
        _ => return Err(DidErrorReason::Method),
    };
    let (kind, rest) = rest.split_once(':').ok_or(DidErrorReason::Kind)?;
    let kind = match kind {
        "human" if rest.contains(':') => return Err(DidErrorReason::ControlledHuman),
        "human" => DidKind::Human(parse_uuid(rest)?),
        "machine" => match rest.rsplit_once(':') {
            None => DidKind::Machine(parse_uuid(rest)?),
            Some((controller, id)) => {
                if depth >= MAX_CONTROLLER_DEPTH {
                    return Err(DidErrorReason::TooDeep);
                }
                let id = parse_uuid(id)?;
                DidKind::Controlled {
                    controller: Box::new(parse(controller, depth + 1)?),
                    id,
                }
            }
        },
        _ => return Err(DidErrorReason::Kind),
    };
    Ok(Did { method, kind })
}

/// A lowercase hyphenated UUID and nothing else.
fn parse_uuid(text: &str) -> Result<Uuid, DidErrorReason> {
    let canonical = text.len() == 36 && !text.bytes().any(|b| b.is_ascii_uppercase());
    match Uuid::try_parse(text) {
        Ok(id) if canonical => Ok(id),
        _ => Err(DidErrorReason::Uuid),
    }
}

impl Serialize for Did {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Did {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const A: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    /// Parses `input`; `expect` is `Ok(kind)` with a short name of the shape, or the
    /// error reason.
    fn check(input: &str, expect: Result<&str, DidErrorReason>) {
        let got = input
            .parse::<Did>()
            .map(|did| {
                assert_eq!(did.to_string(), input, "round trip of {input}");
                match did.kind() {
                    DidKind::Human(_) => "human",
                    DidKind::Machine(_) => "machine",
                    DidKind::Controlled { .. } => "controlled",
                }
            })
            .map_err(|e| e.reason);
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn shapes() {
        use DidErrorReason as R;
        check(&format!("did:tenzro:human:{A}"), Ok("human"));
        check(&format!("did:tenzro:machine:{A}"), Ok("machine"));
        check(&format!("did:pdis:human:{A}"), Ok("human"));
        check(&format!("did:pdis:machine:{A}"), Ok("machine"));
        check(
            &format!("did:tenzro:machine:did:tenzro:human:{A}:{B}"),
            Ok("controlled"),
        );
        check(
            &format!("did:tenzro:machine:did:tenzro:machine:did:pdis:human:{A}:{B}:{A}"),
            Ok("controlled"),
        );
        check(
            &format!("did:tenzro:machine:did:pdis:machine:{A}:{B}"),
            Ok("controlled"),
        );

        check("", Err(R::Scheme));
        check(&format!("DID:tenzro:human:{A}"), Err(R::Scheme));
        check(&format!("did:web:human:{A}"), Err(R::Method));
        check("did:tenzro", Err(R::Method));
        check(&format!("did:tenzro:robot:{A}"), Err(R::Kind));
        check("did:tenzro:human", Err(R::Kind));
        check("did:tenzro:human:", Err(R::Uuid));
        check(
            &format!("did:tenzro:human:{}", A.to_uppercase()),
            Err(R::Uuid),
        );
        check(
            &format!("did:tenzro:human:{}", A.replace('-', "")),
            Err(R::Uuid),
        );
        check(&format!("did:tenzro:human:{{{A}}}"), Err(R::Uuid));
        check(&format!("did:tenzro:human:{A}#key-1"), Err(R::Uuid));
        check(
            &format!("did:tenzro:human:{A}:{B}"),
            Err(R::ControlledHuman),
        );
        check(&format!("did:tenzro:machine:{A}:{B}"), Err(R::Scheme));
        check(
            &format!("did:tenzro:machine:did:tenzro:human:{A}:"),
            Err(R::Uuid),
        );
        check(&format!("did:tenzro:machine::{B}"), Err(R::Scheme));
        check(&"x".repeat(MAX_LEN + 1), Err(R::TooLong));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut did = Did::human(Uuid::parse_str(A).unwrap());
        for _ in 0..MAX_CONTROLLER_DEPTH {
            did = Did::controlled(did, Uuid::parse_str(B).unwrap()).unwrap();
        }
        assert_eq!(did.depth(), MAX_CONTROLLER_DEPTH);
        assert_eq!(did.to_string().parse::<Did>().unwrap(), did);
        let err = Did::controlled(did.clone(), Uuid::parse_str(B).unwrap()).unwrap_err();
        assert_eq!(err.reason, DidErrorReason::TooDeep);
        let text = format!("did:tenzro:machine:{did}:{B}");
        assert_eq!(
            text.parse::<Did>().unwrap_err().reason,
            DidErrorReason::TooDeep
        );
    }

    #[test]
    fn key_uuid_matches_attest_did() {
        let key = tenzro_attest::ProviderKey::from_seed(&[7; 32]).public_key();
        assert_eq!(Did::machine(key_uuid(&key)).to_string(), key.did());
    }

    #[test]
    fn serde_is_the_string() {
        let did: Did = format!("did:tenzro:machine:did:tenzro:human:{A}:{B}")
            .parse()
            .unwrap();
        let json = serde_json::to_string(&did).unwrap();
        assert_eq!(json, format!("\"{did}\""));
        assert_eq!(serde_json::from_str::<Did>(&json).unwrap(), did);
        assert!(serde_json::from_str::<Did>("\"did:tenzro:human:x\"").is_err());
        assert!(serde_json::from_str::<Did>("7").is_err());
    }

    fn arb_did() -> impl Strategy<Value = Did> {
        let method = prop_oneof![Just(Method::Tenzro), Just(Method::Pdis)];
        let id = any::<u128>().prop_map(Uuid::from_u128);
        let leaf = (method.clone(), any::<bool>(), id.clone()).prop_map(|(method, human, id)| {
            let kind = if human {
                DidKind::Human(id)
            } else {
                DidKind::Machine(id)
            };
            Did { method, kind }
        });
        leaf.prop_recursive(4, 8, 1, move |inner| {
            (method.clone(), inner, id.clone()).prop_map(|(method, controller, id)| Did {
                method,
                kind: DidKind::Controlled {
                    controller: Box::new(controller),
                    id,
                },
            })
        })
    }

    proptest! {
        #[test]
        fn round_trips(did in arb_did()) {
            let text = did.to_string();
            prop_assert_eq!(text.parse::<Did>().unwrap(), did.clone());
            let json = serde_json::to_string(&did).unwrap();
            prop_assert_eq!(serde_json::from_str::<Did>(&json).unwrap(), did);
        }

        #[test]
        fn junk_never_panics(input in any::<String>()) {
            if let Ok(did) = input.parse::<Did>() {
                prop_assert_eq!(did.to_string(), input);
            }
        }

        #[test]
        fn near_misses_never_panic(input in "did:(tenzro|pdis|x)?:(human|machine|)?:[0-9a-fA-F:-]{0,120}") {
            if let Ok(did) = input.parse::<Did>() {
                prop_assert_eq!(did.to_string(), input);
            }
        }

        #[test]
        fn mangled_dids_never_panic(did in arb_did(), cut in any::<usize>(), byte in any::<char>()) {
            let mut text = did.to_string();
            let at = cut % (text.len() + 1);
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert(at, byte);
            if let Ok(parsed) = text.parse::<Did>() {
                prop_assert_eq!(parsed.to_string(), text);
            }
        }
    }
}
