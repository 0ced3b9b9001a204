//! protocol layer: see docs/architecture.md.
