"""Disk and registry fault tests: a full state dir while the outbox is written; a registry that fails."""
