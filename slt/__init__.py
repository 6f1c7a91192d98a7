"""`slt`: a command-line client of the service's HTTP API (HTTP only: it imports nothing of the
service, the worker or the trainer, so it runs on a machine that has none of them)."""
