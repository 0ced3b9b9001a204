//! auth layer: see docs/architecture.md.
