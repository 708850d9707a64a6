//! One registered identity: a human or an agent, its key, state and credentials.

use serde::{Deserialize, Serialize};
use tenzro_attest::PublicKey;

use crate::Error;
use crate::credential::Credential;
use crate::did::Did;
use crate::kyc::KycTier;
use crate::lifecycle::Status;

/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 128;
/// The longest capability name, in bytes.
pub const MAX_CAPABILITY_LEN: usize = 128;
/// The most capabilities one agent may list.
pub const MAX_CAPABILITIES: usize = 64;

/// A registered identity. Only the public key is kept; the holder signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub(crate) did: Did,
    pub(crate) public_key: PublicKey,
    pub(crate) role: Role,
    pub(crate) status: Status,
    /// Unix seconds.
    pub(crate) created_at: u64,
    /// Unix seconds of the last lifecycle change (`created_at` until one happens).
    pub(crate) status_changed_at: u64,
    /// Verified when added; in the order they were added.
    #[serde(default)]
    pub(crate) credentials: Vec<Credential>,
}

/// Whether an identity is a person or an agent, with what only that kind has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// A person.
    Human(Human),
    /// An agent or machine, autonomous or controlled.
    Agent(Agent),
}

/// What a human has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Human {
    display_name: String,
    kyc_tier: KycTier,
}

/// What an agent has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    capabilities: Vec<String>,
    reputation: Reputation,
}

/// An agent's reputation, from 0 (worst) to 1 (best). Not money, so a float.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Reputation(f64);

impl Identity {
    pub(crate) fn new(
        did: Did,
        public_key: PublicKey,
        role: Role,
        status: Status,
        now: u64,
    ) -> Self {
        Self {
            did,
            public_key,
            role,
            status,
            created_at: now,
            status_changed_at: now,
            credentials: Vec::new(),
        }
    }

    /// The DID.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// The Ed25519 key the identity signs with.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Human or agent, with their fields.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The human's fields, for a human.
    pub fn human(&self) -> Option<&Human> {
        match &self.role {
            Role::Human(human) => Some(human),
            Role::Agent(_) => None,
        }
    }

    /// The agent's fields, for an agent.
    pub fn agent(&self) -> Option<&Agent> {
        match &self.role {
            Role::Agent(agent) => Some(agent),
            Role::Human(_) => None,
        }
    }

    /// The controlling identity, for a controlled agent (read from the DID).
    pub fn controller(&self) -> Option<&Did> {
        self.did.controller()
    }

    /// The lifecycle state.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Whether it is active (may act and sign).
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// When it was registered, unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// When its state last changed, unix seconds.
    pub fn status_changed_at(&self) -> u64 {
        self.status_changed_at
    }

    /// Credentials held, each verified when it was added.
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }
}

impl Human {
    /// A human's fields; the name is trimmed and must be 1 to 128 characters with no
    /// control characters.
    pub fn new(display_name: &str, kyc_tier: KycTier) -> Result<Self, Error> {
        let display_name = display_name.trim();
        if display_name.is_empty() {
            return Err(Error::DisplayName("empty"));
        }
        if display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(Error::DisplayName("longer than 128 characters"));
        }
        if display_name.chars().any(char::is_control) {
            return Err(Error::DisplayName("holds control characters"));
        }
        Ok(Self {
            display_name: display_name.to_string(),
            kyc_tier,
        })
    }

    /// The name shown for the person.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The tier given at registration (see [`crate::kyc`] for the effective tier).
    pub fn kyc_tier(&self) -> KycTier {
        self.kyc_tier
    }
}

impl Agent {
    /// An agent's fields with a neutral reputation. Capabilities are sorted and
    /// deduplicated; each must be 1 to 128 bytes of printable ASCII without spaces
    /// (for example `chat.completions`), at most 64 of them.
    pub fn new(capabilities: Vec<String>) -> Result<Self, Error> {
        let mut capabilities = capabilities;
        for name in &capabilities {
            check_capability(name)?;
        }
        capabilities.sort_unstable();
        capabilities.dedup();
        if capabilities.len() > MAX_CAPABILITIES {
            return Err(Error::Capability {
                name: format!("({} capabilities)", capabilities.len()),
                reason: "more than 64",
            });
        }
        Ok(Self {
            capabilities,
            reputation: Reputation::NEUTRAL,
        })
    }

    /// What the agent may do, sorted.
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether it lists `capability`.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities
            .binary_search_by(|c| c.as_str().cmp(capability))
            .is_ok()
    }

    /// Its reputation.
    pub fn reputation(&self) -> Reputation {
        self.reputation
    }

    pub(crate) fn set_reputation(&mut self, reputation: Reputation) {
        self.reputation = reputation;
    }

    /// Checks what `new` guarantees, for state read back from storage.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for name in &self.capabilities {
            check_capability(name)?;
        }
        let sorted = self.capabilities.windows(2).all(|w| w[0] < w[1]);
        if !sorted || self.capabilities.len() > MAX_CAPABILITIES {
            return Err(Error::State(
                "capabilities must be sorted, unique and at most 64".to_string(),
            ));
        }
        Ok(())
    }
}

fn check_capability(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_CAPABILITY_LEN {
        "longer than 128 bytes"
    } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed"
    } else {
        return Ok(());
    };
    Err(Error::Capability {
        name: name.chars().take(100).collect(),
        reason,
    })
}

impl Reputation {
    /// Where every agent starts: nothing known either way.
    pub const NEUTRAL: Self = Self(0.5);

    /// A reputation; refuses values outside 0 to 1 and NaN.
    pub fn new(value: f64) -> Result<Self, Error> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(Error::Reputation(value))
        }
    }

    /// The value, 0 to 1.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Reputation {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<Reputation> for f64 {
    fn from(r: Reputation) -> f64 {
        r.0
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        let tier = KycTier::new(1).unwrap();
        assert_eq!(Human::new("  Ada  ", tier).unwrap().display_name(), "Ada");
        assert!(Human::new("   ", tier).is_err());
        assert!(Human::new("a\nb", tier).is_err());
        assert!(Human::new(&"é".repeat(128), tier).is_ok());
        assert!(Human::new(&"é".repeat(129), tier).is_err());
    }

    #[test]
    fn capabilities() {
        let agent = Agent::new(vec!["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(agent.capabilities(), ["a", "b"]);
        assert!(agent.can("a") && !agent.can("c"));
        assert!(agent.validate().is_ok());
        for bad in ["", "two words", "tab\t", "ü", &"x".repeat(129)] {
            assert!(Agent::new(vec![bad.to_string()]).is_err(), "{bad:?}");
        }
        let many = (0..65).map(|i| format!("c{i}")).collect();
        assert!(Agent::new(many).is_err());
    }

    #[test]
    fn reputation_range() {
        assert_eq!(Reputation::new(0.0).unwrap().get(), 0.0);
        assert_eq!(Reputation::new(1.0).unwrap().get(), 1.0);
        for bad in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(Reputation::new(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Reputation>("1.5").is_err());
        assert_eq!(
            serde_json::from_str::<Reputation>("0.25").unwrap().get(),
            0.25
        );
    }
}
