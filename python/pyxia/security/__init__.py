"""Security: TLS for every port and connection, proof of cluster membership on the internal
port, token authentication and authorization on the public port (docs/security.md)."""
