//! What the gateway benchmarks share: the processes under test ([`procs`]) and
//! the mock upstream ([`mock`]).

pub mod mock;
pub mod procs;
