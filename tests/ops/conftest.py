"""Fixtures of the operations tests: the e2e suite's server fixtures (and its hook that
attaches the server logs to a failed test's report) are reused as they are."""

from tests.e2e.conftest import ServerFactory, pytest_runtest_makereport, server_factory

__all__ = ["ServerFactory", "pytest_runtest_makereport", "server_factory"]
