//! Tenzro identities (TDIP): DIDs for humans and agents, their lifecycle, W3C
//! verifiable credentials and KYC tiers. Plain data and rules: no I/O, no clock
//! (every time is a `now` in unix seconds given by the caller), no async.
//!
//! The rules in one place:
//! - **DIDs** ([`did`]): `did:tenzro:human:{uuid}`, `did:tenzro:machine:{uuid}` and
//!   `did:tenzro:machine:{controller-did}:{uuid}`; `did:pdis:` DIDs of the same
//!   shapes parse too (as issuers, subjects or controllers named in credentials), but
//!   the registry mints only `did:tenzro:` DIDs. UUIDs are lowercase and hyphenated,
//!   so a DID has one spelling.
//! - **Keys**: every identity has one Ed25519 key (its DID document's `#key-1`); the
//!   registry keeps only the public key. The DID's UUID is derived from that key
//!   ([`did::key_uuid`]), the same rule as [`tenzro_attest::PublicKey::did`], so a
//!   provider registered as an autonomous agent keeps the DID it already has.
//! - **Humans** have a display name and a KYC tier 0 to 3 ([`KycTier`]). **Agents**
//!   have capabilities, a reputation 0 to 1 ([`Reputation`]) and, if controlled, a
//!   controller (a human or another agent), read from their DID.
//! - **Lifecycle** ([`lifecycle`]): created, active, suspended, terminated. Humans
//!   start active, agents created. Terminated is final. Suspending or terminating a
//!   controller cascades to the agents under it; resuming it resumes the agents the
//!   cascade suspended, not those suspended on their own. An admin's suspension
//!   is lifted only by an admin.
//! - **Credentials** ([`credential`]): W3C VC v1 with an `Ed25519Signature2020` proof
//!   over canonical JSON ([`canonical`]) with a domain tag. Verification checks the
//!   signature with the issuer's key and the validity window at `now`.
//! - **KYC** ([`kyc`]): a human's effective tier is the higher of its registered
//!   tier and its current KYC credentials from trusted issuers; a controlled agent
//!   has its controller's; autonomous agents and inactive identities have 0.
//! - **Registry** ([`Identities`]): in memory; stored as one JSON value (serde)
//!   or one row per identity ([`Identities::from_rows`]); reading it back checks
//!   it. It counts each owner's live agents, for a per-owner cap.
//! - **DID documents** ([`document`]): W3C DID v1 with an
//!   `Ed25519VerificationKey2020` method.

pub mod canonical;
pub mod credential;
pub mod date;
pub mod did;
pub mod document;
mod error;
pub mod identity;
pub mod kyc;
pub mod lifecycle;
pub mod registry;

#[cfg(test)]
mod tests;

pub use credential::{Credential, CredentialBody, CredentialSubject, Proof};
pub use did::{Did, DidError, DidErrorReason, DidKind, Method};
pub use error::Error;
pub use identity::{Agent, Human, Identity, Reputation, Role};
pub use kyc::KycTier;
pub use lifecycle::{Authority, Status};
pub use registry::Identities;
