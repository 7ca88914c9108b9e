"""Independent checks for benchmark rows: a stopwatch around the whole benchmark call.

A row's per-call times come from the benchmark's own timers; the test's stopwatch bounds
them from outside: the timed calls of both sides cannot add up to more than the wall time
of the whole run. A wrong unit (ms reported as s), a wrong divisor (per run instead of per
iteration) or a swapped pair of columns breaks the bound or the ratio's direction.
"""

from __future__ import annotations

import time


def timed_main(main, argv):
    """(return code, wall seconds) of ``main(argv)``."""
    start = time.perf_counter()
    rc = main(argv)
    return rc, time.perf_counter() - start


def assert_timed_calls_fit(timings, wall_s):
    """``timings``: ``(seconds per call, number of timed calls)`` pairs. Each time is positive
    and all the calls together fit in the wall time of the run."""
    assert all(seconds > 0 for seconds, _ in timings), timings
    total = sum(seconds * calls for seconds, calls in timings)
    assert total <= wall_s, (total, wall_s)
