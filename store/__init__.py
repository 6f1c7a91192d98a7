"""The shared store: what every API replica and worker reads and writes through Redis (or an
S3-compatible object store for large artifacts), so no host needs a shared disk."""
