//! The gateway's background tasks over the book and the store: the group commit and
//! the settlement sweep ([`committer`]), the voucher courier to providers
//! ([`vouchers`]) and the bond payouts ([`bonds`]). `lib::serve` starts them.

pub mod bonds;
pub mod committer;
pub mod vouchers;
