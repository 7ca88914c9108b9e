"""Multi-process runs (several hosts, or several processes on one host) over ``jax.distributed``.

Every process runs the same program (SPMD): :func:`start` joins the processes once, before
any JAX computation, and from then on ``jax.devices()`` lists every process's devices, so
:func:`mljax.train.sweep.sweep` lays its members over all of them. On CPU the collectives go
through gloo (``jax_cpu_collectives_implementation``), which lets two processes on
127.0.0.1 stand in for two hosts.

A lost process must never leave the others hanging. JAX's own heartbeats (checked by the
coordinator, process 0) end a surviving process with an abort after
:data:`HEARTBEAT_TIMEOUT_S`; before that, :class:`Cluster` runs its own watchdog: every
process writes a beat into the coordinator's key-value store every :data:`BEAT_S` seconds
and reads everyone else's. A process whose beat has not moved for ``lost_after_s`` seconds
(default :data:`LOST_AFTER_S`), one that reported an error, or an unreachable coordinator
gives a verdict naming the process; the watchdog then interrupts the main thread (a
``KeyboardInterrupt`` inside :meth:`Cluster.interruptible`, so atomic writes remove their
temporary file) and :meth:`Cluster.finish` prints the verdict and exits non-zero. A main
thread that does not come back within :data:`GRACE_S` seconds (blocked in native code) is
ended by the watchdog itself.

A run ends in :meth:`Cluster.finish`: process 0 publishes its outcome, the others wait for
it, and only when process 0 succeeded do they all exit 0 (after ``jax.distributed.shutdown``).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax

__all__ = [
    "BEAT_S",
    "GRACE_S",
    "HEARTBEAT_TIMEOUT_S",
    "LOST_AFTER_S",
    "Cluster",
    "check_options",
    "is_main_process",
    "parse_address",
    "start",
]

BEAT_S = 1.0
"""Seconds between two beats of a process's watchdog."""

LOST_AFTER_S = 10.0
"""A process whose beat has not moved for this long is declared lost."""

GRACE_S = 10.0
"""Seconds the main thread gets to unwind after a verdict before the watchdog ends the process."""

HEARTBEAT_TIMEOUT_S = 40
"""JAX's own heartbeat timeout (its coordinator aborts the others after it): a backstop,
longer than ``LOST_AFTER_S + GRACE_S`` so that the watchdog's clear message comes first."""

INIT_TIMEOUT_S = 120
"""Seconds :func:`start` waits for every process to join."""

SHUTDOWN_TIMEOUT_S = 60
"""Seconds the final ``jax.distributed.shutdown`` barrier waits for the others."""

PREFIX = "mljax/"  # keys in the coordinator's key-value store


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ``[v6 address]:PORT`` is accepted.

    Raises:
        ValueError: no colon, an empty host, a port that is not an integer in 1..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"--coordinator must be HOST:PORT (e.g. 127.0.0.1:12345, port in 1..65535); "
            f"got {text!r}"
        )
    return host, int(port)


def check_options(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    distributed: bool = False,
) -> None:
    """Checks the cluster options of a command line (all unset: one process).

    Raises:
        ValueError: ``--num-processes`` or ``--process-id`` without ``--coordinator``, a
            coordinator without both, a malformed ``HOST:PORT``, ``--num-processes`` < 1, a
            process id outside ``[0, N)``, or ``--distributed`` mixed with explicit options.
    """
    explicit = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    given = [name for name, value in explicit.items() if value is not None]
    if distributed:
        if given:
            raise ValueError(
                f"--distributed reads the cluster from its environment (SLURM, Open MPI, "
                f"TPU pods); do not also give {', '.join(given)}"
            )
        return
    if not given:
        return
    if coordinator is None:
        raise ValueError(
            f"{' and '.join(given)} need(s) --coordinator HOST:PORT (process 0's address)"
        )
    parse_address(coordinator)
    if num_processes is None or process_id is None:
        raise ValueError("--coordinator needs --num-processes N and --process-id I as well")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num-processes must be an integer >= 1, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int):
        raise ValueError(f"--process-id must be an integer, got {process_id!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must be in [0, {num_processes}) for --num-processes "
            f"{num_processes}, got {process_id}"
        )


def is_main_process() -> bool:
    """True in a single-process run and in process 0 of a multi-process one (the process
    that writes results and shows progress). Never starts a JAX backend by itself."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def start(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed: bool = False,
    *,
    lost_after_s: float = LOST_AFTER_S,
) -> Cluster | None:
    """Joins the processes of a run (call once, before any JAX computation).

    Args:
        coordinator: ``HOST:PORT`` of process 0 (it listens there).
        num_processes, process_id: this run's size and this process's index.
        distributed: let ``jax.distributed.initialize()`` read all three from the cluster
            environment (SLURM, Open MPI, TPU pods, ...).
        lost_after_s: seconds without a beat after which a process is declared lost.

    Returns:
        None when no option is set (one process, nothing started), else the running
        :class:`Cluster`.

    Raises:
        ValueError: bad options (:func:`check_options`), no cluster environment found for
            ``distributed``, or the processes could not join.
    """
    check_options(coordinator, num_processes, process_id, distributed)
    if not distributed and coordinator is None:
        return None
    if not lost_after_s > 0:
        raise ValueError(f"lost_after_s must be > 0, got {lost_after_s!r}")
    where = "the cluster environment" if distributed else f"coordinator {coordinator}"
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=INIT_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        hint = (
            " (--distributed found no cluster environment: run it under srun/mpirun, or "
            "give --coordinator, --num-processes and --process-id)"
            if distributed
            else ""
        )
        raise ValueError(f"could not join the run through {where}: {e}{hint}") from e
    # Read when the CPU backend starts (below, at the latest): GPU and TPU hosts keep their
    # own collectives. Set only once the run is joined, so a failed start changes nothing.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jax._src import distributed as jax_distributed  # the client is not public API

    cluster = Cluster(
        jax_distributed.global_state.client,
        jax.process_index(),
        jax.process_count(),
        lost_after_s=lost_after_s,
    )
    cluster.start_watchdog()
    return cluster


class Cluster:
    """This process's place in a multi-process run, and the watchdog that notices a lost one.

    Attributes:
        process_id, num_processes: this process's index and the run's size.
        lost: the watchdog's verdict (None while every process is alive), e.g.
            ``"process 1 of 2 was lost: ..."``.
    """

    def __init__(self, client: Any, process_id: int, num_processes: int, *, lost_after_s: float):
        self.process_id = process_id
        self.num_processes = num_processes
        self.lost: str | None = None
        self._client = client
        self._lost_after_s = lost_after_s
        self._verdict = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._interruptible = False
        self._seen: dict[int, tuple[str | None, float]] = {}  # peer -> (last beat, since)
        self._thread = threading.Thread(target=self._watch, name="mljax-watchdog", daemon=True)

    @property
    def is_main(self) -> bool:
        return self.process_id == 0

    @property
    def peers(self) -> list[int]:
        return [p for p in range(self.num_processes) if p != self.process_id]

    def start_watchdog(self) -> None:
        self._thread.start()

    # ----------------------------------------------------------------- the watchdog thread

    def _entries(self) -> dict[str, str]:
        return dict(self._client.key_value_dir_get(PREFIX))

    def _watch(self) -> None:
        beat, failing_since = 0, None
        while not self._stop.wait(BEAT_S):
            beat += 1
            try:
                self._client.key_value_set(f"{PREFIX}alive/{self.process_id}", str(beat), True)
                entries = self._entries()
            except Exception as e:  # the store is unreachable: process 0 gone, or a hiccup
                if self._stop.is_set():
                    return
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since > self._lost_after_s:
                    n = self.num_processes
                    self._declare(f"lost the coordinator (process 0 of {n}): {e}")
                    return
                continue
            failing_since = None
            verdict = self._judge(entries, time.monotonic())
            if verdict is not None:
                self._declare(verdict)
                return

    def _silent(self, entries: dict[str, str], now: float) -> list[int]:
        """Peers whose beat has not moved for ``lost_after_s`` (updates the record)."""
        silent = []
        for p in self.peers:
            value = entries.get(f"{PREFIX}alive/{p}")
            last_value, since = self._seen.get(p, (None, now))
            if value != last_value or p not in self._seen:
                self._seen[p] = (value, now)
            elif now - since > self._lost_after_s:
                silent.append(p)
        return silent

    def _judge(self, entries: dict[str, str], now: float) -> str | None:
        """The first peer that failed or went silent, as a sentence."""
        n = self.num_processes
        for p in self.peers:
            failed = entries.get(f"{PREFIX}failed/{p}")
            if failed is not None:
                return f"process {p} of {n} stopped with an error ({failed})"
        silent = self._silent(entries, now)
        if silent:
            return (
                f"process {silent[0]} of {n} was lost: no sign of life for "
                f"{self._lost_after_s:g} s (killed, crashed or unreachable)"
            )
        return None

    def _declare(self, verdict: str) -> None:
        with self._lock:
            self.lost = verdict
            self._verdict.set()
            if self._interruptible:
                _thread.interrupt_main()  # KeyboardInterrupt in the guarded run
        if not self._stop.wait(GRACE_S):  # the main thread is stuck in native code
            _exit(1, f"error: {verdict}")

    # ----------------------------------------------------------------- the main thread

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """The run: a verdict of the watchdog raises ``KeyboardInterrupt`` inside it."""
        with self._lock:
            if self.lost is not None:
                raise KeyboardInterrupt
            self._interruptible = True
        try:
            yield
        finally:
            with self._lock:
                self._interruptible = False

    def finish(self, code: int) -> int:
        """Ends this process's part of the run.

        With ``code`` 0 and no verdict, waits until process 0 reports success (process 0:
        until every other process has seen it), then shuts the runtime down and returns 0.
        Otherwise reports the failure to the others, prints the verdict (waiting up to
        ``lost_after_s`` for one) and ends the process with ``code`` (1 where it was 0),
        skipping the shutdown barrier that a lost process would never reach.
        """
        if code == 0 and self.lost is None and self._agree_on_success():
            self._stop.set()
            self._thread.join()
            jax.distributed.shutdown()
            return 0
        self._try_set(f"failed/{self.process_id}", f"exit {code or 1}")
        if self.lost is None:
            self._verdict.wait(self._lost_after_s + 3 * BEAT_S)
        message = f"error: {self.lost}" if self.lost else ""
        self._stop.set()
        if self.is_main:
            # The others read from this process's store, and JAX aborts them as soon as it
            # goes: wait until each has left or is silent.
            self._wait_for(
                self._peers_gone, timeout=self._lost_after_s + GRACE_S, stop_on_verdict=False
            )
            time.sleep(BEAT_S / 2)
        else:
            self._try_set(f"exiting/{self.process_id}", "1")
        _exit(code or 1, message)
        return code or 1  # only reached when _exit is replaced (tests)

    def _peers_gone(self, entries: dict[str, str]) -> bool:
        silent = set(self._silent(entries, time.monotonic()))
        return all(f"{PREFIX}exiting/{p}" in entries or p in silent for p in self.peers)

    def _agree_on_success(self) -> bool:
        if self.is_main:
            self._try_set("outcome", "ok")
            return self._wait_for(lambda e: all(f"{PREFIX}finished/{p}" in e for p in self.peers))
        ok = self._wait_for(lambda e: f"{PREFIX}outcome" in e)
        return ok and self._try_set(f"finished/{self.process_id}", "ok")

    def _wait_for(
        self, condition, *, timeout: float | None = None, stop_on_verdict: bool = True
    ) -> bool:
        """Polls the store until ``condition(entries)``; False after ``timeout`` seconds
        (None: no limit), on a verdict (with ``stop_on_verdict``) or an unreachable store."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (stop_on_verdict and self.lost is not None) and (
            deadline is None or time.monotonic() < deadline
        ):
            try:
                if condition(self._entries()):
                    return True
            except Exception:
                return False
            time.sleep(BEAT_S / 5)
        return False

    def _try_set(self, key: str, value: str) -> bool:
        try:
            self._client.key_value_set(PREFIX + key, value, True)
        except Exception:
            return False
        return True


def _exit(code: int, message: str) -> None:
    """Ends the process now (no atexit: JAX's shutdown barrier would wait for the lost)."""
    if message:
        print(message, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
