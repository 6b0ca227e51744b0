"""Example services (run with tether serve from this directory or the repository root)."""
