//! The `shardpop` command line.
fn main() {}
