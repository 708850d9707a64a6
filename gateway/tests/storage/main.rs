//! The gateway's storage tests, in one binary: each runs on SQLite and, when
//! `TENZRO_TEST_POSTGRES_URL` is set, on PostgreSQL in a fresh database.

mod common;

mod a2a_store;
mod bonds_store;
mod cluster_store;
mod disputes_store;
mod store;
