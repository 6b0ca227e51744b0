"""Helpers for testing and demonstrating services on tether (throwaway PostgreSQL, a
headless browser)."""
