"""Test helpers shared across test packages: a real docker-registry and busybox images."""
