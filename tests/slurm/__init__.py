"""End-to-end tests against a real SLURM cluster run on loopback (see conftest.py)."""
