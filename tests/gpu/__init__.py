"""GPU tests: see conftest.py."""
