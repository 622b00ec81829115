"""Test-only stand-in for ``setproctitle`` (DiffMM's ``Main.py`` imports it; the tests never call it)."""


def setproctitle(title: str) -> None:
    return None
