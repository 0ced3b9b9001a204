//! Per-shard counters and latency histograms, merged on read.
