"""Operator and developer tooling: migrations, the embedded database, the local API (`make run`)."""
