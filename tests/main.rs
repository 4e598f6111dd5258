//! The integration test binary: every test here runs against a real PostgreSQL started by
//! `philotes-testkit` (one cluster per test run, one fresh database per test), never a mock.

mod binary_values;
mod capture;
mod capture_big;
mod capture_faults;
mod capture_types;
mod cli;
mod cluster;
mod compact;
mod deploy;
mod errors;
mod flush;
mod flush_faults;
mod hardening;
mod infinity;
mod metrics;
mod migrate;
mod mirror;
mod names;
mod partition;
mod rest;
mod retry;
mod schema_evolution;
mod session;
mod slot;
mod snapshot;
mod snapshot_cli;
mod support;
mod tls;
mod traces;
