"""Test-suite settings: property-based tests draw the same examples on every run (seeded)."""

from hypothesis import settings

settings.register_profile("fastpg", derandomize=True)
settings.load_profile("fastpg")
