"""The one error type a user can fix; every module raises it with what, where and how to fix."""

from __future__ import annotations


class FmlabError(Exception):
    """An error the user can fix (bad data, flags, files). The CLI prints it without a traceback."""
