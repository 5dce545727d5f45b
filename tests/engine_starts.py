"""Engine lifetimes across the session (a plugin of every test module, see conftest.py).

Engine starts are the slow part of the suite, so each one is recorded (`engine_start`) and the
run ends with one line: how many started, how (compiled or eager, in this process or in their
own), and their seconds. Session engines are shut down after the last test that uses them
(`release_after_last_use`), not at the end of the session, so that they do not sit beside the
engines of later tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class EngineStart:
    label: str
    compiled: bool
    in_process: bool
    seconds: float


STARTS: list[EngineStart] = []
#: fixture name -> nodeid of the last collected test that uses it (directly or not).
_LAST_USE: dict[str, str] = {}
#: fixture name -> what shuts its resource down.
_RELEASES: dict[str, Callable[[], None]] = {}


@contextmanager
def engine_start(label: str, compiled: bool, in_process: bool = False) -> Iterator[None]:
    """Time an engine start; only starts that succeed are counted (refusals are not starts)."""
    began = time.monotonic()
    yield
    STARTS.append(EngineStart(label, compiled, in_process, time.monotonic() - began))


def release_after_last_use(fixture_name: str, release: Callable[[], None]) -> None:
    """Run `release` once the last test that uses `fixture_name` has been torn down. `release`
    must be safe to call again (the fixture's own teardown still runs at the end). A test's
    uses are its fixtures' arguments, transitively: a fixture looked up by name at run time
    (`request.getfixturevalue`) is not seen, so session engines are always named as arguments."""
    _RELEASES[fixture_name] = release


def summary(starts: list[EngineStart]) -> str:
    def seconds(of: list[EngineStart]) -> str:
        return f"{len(of)} in {sum(s.seconds for s in of):.0f} s"

    compiled = [s for s in starts if s.compiled]
    eager = [s for s in starts if not s.compiled]
    in_process = [s for s in starts if s.in_process]
    return (
        f"engine starts: {seconds(starts)} (compiled {seconds(compiled)}, eager "
        f"{seconds(eager)}; in this process {seconds(in_process)})"
    )


@pytest.hookimpl(trylast=True)  # after deselection and pytest's own reordering
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _LAST_USE.clear()
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            _LAST_USE[name] = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    for name, nodeid in _LAST_USE.items():
        if nodeid == item.nodeid and name in _RELEASES:
            _RELEASES.pop(name)()
    return result


def pytest_terminal_summary(terminalreporter) -> None:
    if STARTS:
        terminalreporter.write_sep("-", "engine starts")
        slowest = sorted(STARTS, key=lambda s: -s.seconds)[:5]
        for start in slowest:
            how = ("compiled" if start.compiled else "eager") + (
                ", in this process" if start.in_process else ""
            )
            terminalreporter.write_line(f"{start.seconds:7.1f} s  {start.label} ({how})")
        terminalreporter.write_line(summary(STARTS))
