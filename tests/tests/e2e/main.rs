//! The end-to-end tests, in one binary: real gateway and provider binaries or
//! in-process gateways on ephemeral 127.0.0.1 ports, driven by real clients.
//!
//! One binary rather than one per file: each test binary links the whole
//! gateway, provider and engine, and ten of them cost CI minutes and gigabytes
//! of disk for nothing.

mod gateway_common;

mod adversary_agents;
mod adversary_payer;
mod adversary_provider;
mod adversary_registry;
mod attest_policy;
mod audit_peer;
mod gateway_api;
mod gateway_attest;
mod gateway_bonds;
mod gateway_clock;
mod gateway_failures;
mod gateway_money;
mod gateway_register;
mod replicas;
