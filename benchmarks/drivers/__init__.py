"""Experiment drivers and doc writers (scripts): ``.venv/bin/python benchmarks/drivers/<script>.py ...``."""
