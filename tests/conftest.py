"""Fixtures shared by the test modules."""

from __future__ import annotations

from tests.etcd import etcd_server
from tests.postgres import postgres_dsn

__all__ = ["etcd_server", "postgres_dsn"]
