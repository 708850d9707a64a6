//! The in-memory registry of identities, and its persisted form.
//!
//! DIDs are minted from keys, never at random, so registering is deterministic:
//! a human is `did:tenzro:human:{key_uuid}`, an autonomous agent
//! `did:tenzro:machine:{key_uuid}` (a provider's DID, the same as
//! [`tenzro_attest::PublicKey::did`]) and a controlled agent
//! `did:tenzro:machine:{controller}:{key_uuid}`, with `key_uuid` from
//! [`crate::did::key_uuid`]. One key can therefore hold one human identity, one
//! autonomous agent and one agent per controller; registering the same again fails.
//!
//! Serialized (serde) the registry is `{"version": 1, "identities": [...],
//! "trusted_issuers": [{"did", "public_key"}]}`; reading it back checks that DIDs
//! match their keys and kinds, that controllers exist and that lifecycle states
//! agree with their controllers'. Credentials are not verified again on load.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tenzro_attest::PublicKey;

use crate::credential::Credential;
use crate::did::{Did, Method, key_uuid};
use crate::identity::{Agent, Human, Identity, Reputation, Role};
use crate::kyc::KycTier;
use crate::lifecycle::Status;
use crate::{Error, document};

/// The version of the persisted form this crate writes and reads.
pub const STATE_VERSION: u32 = 1;

/// Every identity known, with the trusted credential issuers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identities {
    pub(crate) identities: BTreeMap<Did, Identity>,
    /// Controller to the agents it controls directly (derived, not persisted).
    pub(crate) controlled: BTreeMap<Did, BTreeSet<Did>>,
    /// Owner (the top of a controller chain) to how many agents under it are not
    /// terminated (derived, not persisted).
    live_agents: BTreeMap<Did, usize>,
    trusted_issuers: BTreeMap<Did, PublicKey>,
}

impl Identities {
    /// An empty registry that trusts no issuer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `did`, signing with `key`, to issue credentials; KYC credentials count
    /// only from trusted issuers. Replaces any key given before for `did`.
    pub fn trust_issuer(&mut self, did: Did, key: PublicKey) {
        self.trusted_issuers.insert(did, key);
    }

    /// Stops trusting `did`; its KYC credentials stop counting at once. Returns
    /// whether it was trusted.
    pub fn distrust_issuer(&mut self, did: &Did) -> bool {
        self.trusted_issuers.remove(did).is_some()
    }

    /// Whether `did` is a trusted issuer.
    pub fn is_trusted_issuer(&self, did: &Did) -> bool {
        self.trusted_issuers.contains_key(did)
    }

    /// The trusted issuers and their keys.
    pub fn trusted_issuers(&self) -> impl Iterator<Item = (&Did, &PublicKey)> {
        self.trusted_issuers.iter()
    }

    /// Registers a person, active at once. The DID is `did:tenzro:human:{key_uuid}`.
    pub fn register_human(
        &mut self,
        display_name: &str,
        kyc_tier: KycTier,
        public_key: PublicKey,
        now: u64,
    ) -> Result<Did, Error> {
        let human = Human::new(display_name, kyc_tier)?;
        let did = Did::human(key_uuid(&public_key));
        self.insert(Identity::new(
            did,
            public_key,
            Role::Human(human),
            Status::Active,
            now,
        ))
    }

    /// Registers an agent in the created state: autonomous without a controller,
    /// controlled otherwise. The controller must be registered and not terminated;
    /// while it is not active the agent cannot be activated.
    pub fn register_agent(
        &mut self,
        controller: Option<&Did>,
        capabilities: Vec<String>,
        public_key: PublicKey,
        now: u64,
    ) -> Result<Did, Error> {
        let agent = Agent::new(capabilities)?;
        let id = key_uuid(&public_key);
        let did = match controller {
            None => Did::machine(id),
            Some(controller) => {
                let found = self
                    .resolve(controller)
                    .ok_or_else(|| Error::Unknown(controller.clone()))?;
                if *found.status() == Status::Terminated {
                    return Err(Error::Terminated(controller.clone()));
                }
                Did::controlled(controller.clone(), id)?
            }
        };
        self.insert(Identity::new(
            did,
            public_key,
            Role::Agent(agent),
            Status::Created,
            now,
        ))
    }

    fn insert(&mut self, identity: Identity) -> Result<Did, Error> {
        let did = identity.did.clone();
        if self.identities.contains_key(&did) {
            return Err(Error::Exists(did));
        }
        if let Some(controller) = did.controller() {
            self.controlled
                .entry(controller.clone())
                .or_default()
                .insert(did.clone());
        }
        let live = identity.status != Status::Terminated;
        self.identities.insert(did.clone(), identity);
        if live {
            self.count_live(&did, true);
        }
        Ok(did)
    }

    /// Counts a controlled agent in (or out of) its owner's live agents.
    pub(crate) fn count_live(&mut self, did: &Did, born: bool) {
        if did.controller().is_none() {
            return;
        }
        let owner = owner_of(did).clone();
        let n = self.live_agents.entry(owner.clone()).or_default();
        if born {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live_agents.remove(&owner);
            }
        }
    }

    /// How many agents under `owner` (directly or through other agents) are not
    /// terminated; `owner` is the top of their controller chain (see [`owner_of`]).
    pub fn live_agents_of(&self, owner: &Did) -> usize {
        self.live_agents.get(owner).copied().unwrap_or(0)
    }

    /// The first identity in `did`'s chain (itself, then its controllers upwards)
    /// that is not active, with its state; `None` when the whole chain is active.
    /// An unregistered DID in the chain counts as not active.
    pub fn inactive_in_chain(&self, did: &Did) -> Option<(Did, &'static str)> {
        let mut next = Some(did);
        while let Some(d) = next {
            match self.resolve(d) {
                Some(i) if i.is_active() => {}
                Some(i) => return Some((d.clone(), i.status().name())),
                None => return Some((d.clone(), "unregistered")),
            }
            next = d.controller();
        }
        None
    }

    /// Builds a registry from stored rows (one identity each, in any order) and the
    /// trusted issuers, with the same checks as reading the whole registry back.
    pub fn from_rows(
        identities: Vec<Identity>,
        trusted_issuers: Vec<(Did, PublicKey)>,
    ) -> Result<Self, Error> {
        Self::from_snapshot(Snapshot {
            version: STATE_VERSION,
            identities,
            trusted_issuers: trusted_issuers
                .into_iter()
                .map(|(did, public_key)| TrustedIssuer { did, public_key })
                .collect(),
        })
    }

    /// The identity with this DID, in any state.
    pub fn resolve(&self, did: &Did) -> Option<&Identity> {
        self.identities.get(did)
    }

    /// The W3C DID document of a registered identity (see [`crate::document`]).
    pub fn did_document(&self, did: &Did) -> Option<Value> {
        self.resolve(did).map(document::did_document)
    }

    /// Every identity, ordered by DID.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
    }

    /// How many identities are registered, terminated ones included.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The agents `did` controls directly, in any state.
    pub fn controlled_agents(&self, did: &Did) -> Vec<&Identity> {
        self.controlled
            .get(did)
            .into_iter()
            .flatten()
            .filter_map(|agent| self.identities.get(agent))
            .collect()
    }

    /// Sets an agent's reputation; refused for humans and terminated agents.
    pub fn set_reputation(&mut self, did: &Did, reputation: Reputation) -> Result<(), Error> {
        let identity = self
            .identities
            .get_mut(did)
            .ok_or_else(|| Error::Unknown(did.clone()))?;
        if identity.status == Status::Terminated {
            return Err(Error::Terminated(did.clone()));
        }
        match &mut identity.role {
            Role::Agent(agent) => {
                agent.set_reputation(reputation);
                Ok(())
            }
            Role::Human(_) => Err(Error::NotAgent(did.clone())),
        }
    }

    /// Verifies `credential` and stores it with `did`, its subject. The issuer's key
    /// is the trusted issuer key for its DID if there is one, else the key of the
    /// issuer's registered identity, which must be active. The credential must be
    /// in force at `now`. Adding one already held changes nothing.
    pub fn add_credential(
        &mut self,
        did: &Did,
        credential: Credential,
        now: u64,
    ) -> Result<(), Error> {
        if credential.subject.id != *did {
            return Err(Error::WrongSubject {
                did: did.clone(),
                subject: credential.subject.id,
            });
        }
        let issuer_key = self.issuer_key(&credential.issuer)?;
        credential.verify(&issuer_key, now)?;
        let identity = self
            .identities
            .get_mut(did)
            .ok_or_else(|| Error::Unknown(did.clone()))?;
        if identity.status == Status::Terminated {
            return Err(Error::Terminated(did.clone()));
        }
        let held = identity
            .credentials
            .iter()
            .any(|c| c.proof.proof_value == credential.proof.proof_value);
        if !held {
            identity.credentials.push(credential);
        }
        Ok(())
    }

    fn issuer_key(&self, issuer: &Did) -> Result<PublicKey, Error> {
        if let Some(key) = self.trusted_issuers.get(issuer) {
            return Ok(*key);
        }
        match self.resolve(issuer) {
            Some(identity) if identity.is_active() => Ok(*identity.public_key()),
            _ => Err(Error::UntrustedIssuer(issuer.clone())),
        }
    }

    /// Builds a registry from its persisted form, checking it (see the module docs).
    fn from_snapshot(snapshot: Snapshot) -> Result<Self, Error> {
        if snapshot.version != STATE_VERSION {
            return Err(state(format!(
                "version {} (this build reads {STATE_VERSION})",
                snapshot.version
            )));
        }
        let mut registry = Self::new();
        for issuer in snapshot.trusted_issuers {
            registry.trust_issuer(issuer.did, issuer.public_key);
        }
        for identity in snapshot.identities {
            check_identity(&identity)?;
            registry.insert(identity)?;
        }
        for identity in registry.identities.values() {
            let Some(controller) = identity.controller() else {
                continue;
            };
            let Some(found) = registry.resolve(controller) else {
                return Err(state(format!(
                    "{}: controller is not registered",
                    identity.did
                )));
            };
            let agrees = match identity.status() {
                Status::Active => found.is_active(),
                Status::Terminated => true,
                _ => *found.status() != Status::Terminated,
            };
            if !agrees {
                return Err(state(format!(
                    "{} is {} while its controller is {}",
                    identity.did,
                    identity.status().name(),
                    found.status().name()
                )));
            }
        }
        Ok(registry)
    }
}

/// The top of `did`'s controller chain: the person (or autonomous agent) that owns
/// it, directly or through other agents; `did` itself when it has no controller.
pub fn owner_of(did: &Did) -> &Did {
    let mut top = did;
    while let Some(c) = top.controller() {
        top = c;
    }
    top
}

/// What `Identities::from_snapshot` checks of each identity on its own.
fn check_identity(identity: &Identity) -> Result<(), Error> {
    let did = &identity.did;
    let mismatch = |what| Error::Mismatch {
        did: did.clone(),
        what,
    };
    if did.method() != Method::Tenzro || did.uuid() != key_uuid(&identity.public_key) {
        return Err(mismatch("key"));
    }
    match &identity.role {
        Role::Human(human) if did.is_human() => {
            let again = Human::new(human.display_name(), human.kyc_tier())?;
            if again != *human {
                return Err(Error::DisplayName("not trimmed"));
            }
        }
        Role::Agent(agent) if did.is_machine() => agent.validate()?,
        _ => return Err(mismatch("kind")),
    }
    if identity.credentials.iter().any(|c| c.subject.id != *did) {
        return Err(mismatch("credential subjects"));
    }
    Ok(())
}

fn state(reason: String) -> Error {
    Error::State(reason)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    identities: Vec<Identity>,
    #[serde(default)]
    trusted_issuers: Vec<TrustedIssuer>,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    identities: Vec<&'a Identity>,
    trusted_issuers: Vec<TrustedIssuer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedIssuer {
    did: Did,
    public_key: PublicKey,
}

impl Serialize for Identities {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SnapshotRef {
            version: STATE_VERSION,
            identities: self.identities.values().collect(),
            trusted_issuers: self
                .trusted_issuers
                .iter()
                .map(|(did, key)| TrustedIssuer {
                    did: did.clone(),
                    public_key: *key,
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Identities {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let snapshot = Snapshot::deserialize(d)?;
        Self::from_snapshot(snapshot).map_err(serde::de::Error::custom)
    }
}
