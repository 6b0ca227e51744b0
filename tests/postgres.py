"""The session's throwaway PostgreSQL (``tether.testing.postgres``) as a fixture.

PostgreSQL that cannot start fails the tests that need it instead of skipping them:
a skipped proof is not a proof.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether.testing.postgres import PostgresUnavailable, throwaway_postgres

__all__ = ["postgres_dsn", "throwaway_postgres"]


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL started once for the session (user ``postgres``, trust)."""
    try:
        with throwaway_postgres() as dsn:
            yield dsn
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
