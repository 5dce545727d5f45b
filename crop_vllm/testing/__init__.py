"""Test and benchmark helpers (tiny random-weight checkpoints)."""
