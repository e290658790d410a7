"""Pieces shared by clients, data servers and the coordinator (hashing, shard ranges)."""
