"""Timing benchmarks (scripts): ``.venv/bin/python benchmarks/timing/<script>.py ...`` from the repository root."""
