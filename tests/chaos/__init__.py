"""Chaos tests: the fault-injecting TCP proxy and its tests."""
