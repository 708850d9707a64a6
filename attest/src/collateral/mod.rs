//! Collateral for verifying evidence without asking anyone at verification time:
//! Intel's (TCB info, QE identity, CRLs) for TDX quotes, one JSON file per FMSPC
//! with the time it stops being valid, and AMD's VCEK/ASK/ARK for SEV-SNP reports,
//! named by chip and TCB.
//!
//! No network here. A fetcher (the gateway's `collateral` module) asks a PCCS, Intel
//! PCS or AMD KDS for the items this module names ([`intel::pccs_paths`],
//! [`amd::KdsRequest`]), hands the answers back to be assembled and dated
//! ([`intel::assemble`], [`intel::next_update`]), and keeps them in files so the same
//! verification runs offline.

pub mod amd;
pub mod intel;
mod time;

pub use time::parse_rfc3339;
