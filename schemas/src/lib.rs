//! philotes-schemas: the mapping of Postgres types to typed values, Arrow and Iceberg types, and schema versions.
//!
//! Empty until the capture issue lands; the crate exists so the dependency direction of DESIGN.md
//! (`philotes` → `stages` → `engine`, `schemas`) holds from the first commit.
