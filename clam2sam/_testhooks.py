"""Test hook (not a user feature): deterministic crash points for the crash/resume tests.

With the environment variable ``CLAM2SAM_TEST_KILL_AT="<point>:<n>"`` the process kills itself with
SIGKILL (no cleanup, no ``finally``, exactly like ``kill -9`` or the OOM killer) the ``n``-th time
(1-based, counted per process) execution reaches ``maybe_die(point)``. ``"<point>:<n>:INT"`` (or ``TERM``)
sends that signal instead (Ctrl-C / a polite kill at exactly that point). Without the variable every call
is a dictionary lookup that returns at once.

Points of ``clam2sam convert`` (where :mod:`clam2sam.store.writer` and :mod:`clam2sam.store.fast_write` call
:func:`maybe_die`):

* ``init``: the store's root group exists but its attributes are not written yet (first run only).
* ``json``: a metadata file of a slide is written (``clam2sam.store.fast_write.write_json``) but not yet renamed
  into place (the group's) or followed by its array's shard (an array's).
* ``chunk``: an inner chunk of a shard is written, the shard's index is not (a shard cut short).
* ``features``: a slide's ``features`` array is created but its data are not written yet.
* ``array``: after each array of a slide group is written (between arrays).
* ``complete``: a slide's arrays and attrs are written, its ``complete`` mark is not.
* ``written``: a slide is complete, the store's root attrs (feature dim/dtype, encoder) are not updated yet.
* ``consolidate``: ``n_slides`` is updated, the store's metadata is not consolidated yet.

Used by ``tests/hardening/test_crash_resume.py``.
"""
from __future__ import annotations

import os
import signal

ENV = "CLAM2SAM_TEST_KILL_AT"
_COUNTS: dict[str, int] = {}


def maybe_die(point: str) -> None:
    """SIGKILL this process when ``CLAM2SAM_TEST_KILL_AT`` names ``point`` and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    n, _, sig = rest.partition(":")
    _COUNTS[point] = _COUNTS.get(point, 0) + 1
    if _COUNTS[point] == int(n or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}") if sig else signal.SIGKILL)
