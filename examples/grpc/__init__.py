"""The order service over gRPC: see README.md."""
