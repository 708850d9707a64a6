//! The crate's error type.

use crate::canonical::CanonicalError;
use crate::did::{Did, DidError};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string that is not a DID.
    #[error(transparent)]
    Did(#[from] DidError),
    /// No identity has this DID.
    #[error("no identity {0}")]
    Unknown(Did),
    /// The DID is already registered (one identity per key, kind and controller).
    #[error("identity {0} already exists")]
    Exists(Did),
    /// The identity is terminated: final, nothing more can happen to it.
    #[error("identity {0} is terminated")]
    Terminated(Did),
    /// A lifecycle step that the identity's state does not allow.
    #[error("identity {did} is {state}; cannot {action} it")]
    Transition {
        /// The identity.
        did: Did,
        /// Its state now.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// A controller asked to lift a suspension an admin made.
    #[error("identity {0} was suspended by an admin; only an admin may resume it")]
    AdminSuspended(Did),
    /// An agent cannot be activated or resumed while its controller is not active.
    #[error("controller {controller} of {did} is not active")]
    ControllerInactive {
        /// The agent.
        did: Did,
        /// Its controller.
        controller: Did,
    },
    /// An operation for agents asked of a human.
    #[error("identity {0} is not an agent")]
    NotAgent(Did),
    /// A DID that only this crate's registry may mint (`did:tenzro`, derived from
    /// the key) did not match its key or kind.
    #[error("identity {did} does not match its {what}")]
    Mismatch {
        /// The identity.
        did: Did,
        /// What it fails to match.
        what: &'static str,
    },
    /// A KYC tier outside 0 to 3.
    #[error("KYC tier {0} is out of range 0-3")]
    KycTier(u8),
    /// A reputation outside 0 to 1 (or not a number).
    #[error("reputation {0} is out of range 0-1")]
    Reputation(f64),
    /// A display name that is empty, too long or holds control characters.
    #[error("invalid display name: {0}")]
    DisplayName(&'static str),
    /// A capability name that is empty, too long or holds spaces or controls.
    #[error("invalid capability {name:?}: {reason}")]
    Capability {
        /// The capability as given (cut to 100 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A credential that is malformed (before any signature check).
    #[error("invalid credential: {0}")]
    Credential(String),
    /// A credential or claim value with no canonical form.
    #[error("credential cannot be canonicalized: {0}")]
    Canonical(#[from] CanonicalError),
    /// The proof does not verify against the issuer's key.
    #[error("credential signature does not verify against the key of issuer {0}")]
    BadSignature(Did),
    /// The credential's expiration date has passed.
    #[error("credential expired at {expires_at} (now {now})")]
    Expired {
        /// Its expiry, unix seconds.
        expires_at: u64,
        /// The time of the check, unix seconds.
        now: u64,
    },
    /// The credential's issuance date is still ahead.
    #[error("credential is not valid before {issued_at} (now {now})")]
    NotYetValid {
        /// Its issuance, unix seconds.
        issued_at: u64,
        /// The time of the check, unix seconds.
        now: u64,
    },
    /// The credential's issuer is neither a trusted issuer nor an active registered identity.
    #[error("issuer {0} is neither trusted nor an active registered identity")]
    UntrustedIssuer(Did),
    /// The credential is about someone else.
    #[error("credential subject {subject} is not {did}")]
    WrongSubject {
        /// The identity it was offered for.
        did: Did,
        /// Whom it is about.
        subject: Did,
    },
    /// Persisted registry state that does not hold together.
    #[error("invalid registry state: {0}")]
    State(String),
}
