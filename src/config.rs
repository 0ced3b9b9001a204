//! Typed configuration: see docs/operations.md.
