"""The data server: shard controllers, replication, and the gRPC services."""
