"""Storage: how a shard keeps its keys and records (key formats, encodings, sequences)."""
