"""Fixtures of the dashboard tests: ``processes`` starts ``sitq web`` subprocesses."""

from tests.web.server import processes

__all__ = ["processes"]
