//! Providers as the gateway knows them: who they are and what they serve
//! ([`registry`], with the registration [`bounds`]), which to try ([`routing`]),
//! which to keep out ([`breaker`], [`status`]), and what their TEE evidence proves
//! ([`attestation`] with [`collateral`] and the operator's [`policy`]; the
//! [`verdict`] with its typed failures).

pub mod attestation;
pub mod bounds;
pub mod breaker;
pub mod collateral;
pub mod entry;
pub mod index;
pub mod info;
pub mod policy;
pub mod registry;
pub mod routing;
pub mod settings;
pub mod status;
pub mod verdict;
