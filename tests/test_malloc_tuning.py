"""`tune_malloc()` keeps large freed buffers in the process (glibc mallopt), so repeated
allocations of the same size stop page-faulting, also in worker threads; the command-line
entry points re-execute themselves with GLIBC_TUNABLES (huge pages for what must be mmap-ed);
a plain `import mljax` changes nothing.
Reference: the kernel's own minor-fault counter (getrusage) in fresh subprocesses, with and
without the tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mljax import malloc_tuning

PROBE = r"""
import ctypes, json, os, resource
import mljax
from mljax import malloc_tuning
import sys, threading
if TUNE:
    malloc_tuning.tune_malloc()
MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 40
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def churn():  # 10 rounds of two live MIB-MiB buffers, written once and freed, as XLA's per-call
    for _ in range(10):  # temporaries (plain malloc: numpy madvises its own large arrays)
        buffers = [libc.malloc(MIB << 20) for _ in range(2)]
        for p in buffers:
            ctypes.memset(p, 1, MIB << 20)
        for p in reversed(buffers):
            libc.free(p)
def in_worker():  # XLA allocates from its worker threads, which get arenas of their own
    t = threading.Thread(target=lambda: (churn(), churn_faults.append(measure())))
    t.start(); t.join()
def measure():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    churn()
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
churn()  # warm-up: the first allocation faults in either case
faults = measure()
churn_faults = []
in_worker()
print(json.dumps({"applied": malloc_tuning.applied, "faults": faults,
                  "worker_faults": churn_faults[0], "tunables": os.environ.get("GLIBC_TUNABLES")}))
if __name__ == "__main__" and REEXEC:
    malloc_tuning.reexec_with_tuned_malloc()
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt tuning is glibc-only",
)


def _probe(*args, reexec=False, tune=True, tmp_path=None, **env_overrides):
    """Runs PROBE in a fresh interpreter; with ``reexec`` as a script that calls
    reexec_with_tuned_malloc after its first report (each process prints one JSON line)."""
    env = {k: v for k, v in os.environ.items() if k not in malloc_tuning._USER_SETTINGS}
    for name in ("MLJAX_MALLOC_TUNING", malloc_tuning.REEXEC_MARK):
        env.pop(name, None)
    env.update(env_overrides)
    source = f"REEXEC = {reexec}\nTUNE = {tune}\n" + PROBE
    if reexec:
        script = tmp_path / "probe.py"
        script.write_text(source)
        command = [sys.executable, str(script), *args]
    else:
        command = [sys.executable, "-c", source, *args]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()]


@glibc
@pytest.mark.slow
def test_tune_malloc_stops_page_faults_on_repeated_large_allocations():
    [tuned] = _probe()
    [default] = _probe(MLJAX_MALLOC_TUNING="0")
    [imported] = _probe(tune=False)  # import mljax alone must leave glibc's defaults
    assert tuned["applied"] and not default["applied"] and not imported["applied"]
    assert imported["faults"] >= 20 * (40 << 8) // 2, imported
    assert imported["worker_faults"] >= 20 * (40 << 8) // 2, imported
    # glibc's default mmaps each 40 MiB buffer afresh: one fault per 4 KiB page.
    assert default["faults"] >= 20 * (40 << 8) // 2, default
    assert tuned["faults"] < default["faults"] / 10, (tuned, default)
    # In a worker thread's arena (64 MiB heaps) the second buffer needs a heap of its own, which
    # glibc unmaps once it is empty unless the top pad covers a heap: the 64 MiB pad keeps it.
    assert default["worker_faults"] >= 20 * (40 << 8) // 2, default
    assert tuned["worker_faults"] < default["worker_faults"] / 10, (tuned, default)


@glibc
@pytest.mark.slow
def test_explicit_glibc_settings_are_respected():
    for name, value in (("MALLOC_MMAP_THRESHOLD_", "131072"), ("MALLOC_ARENA_MAX", "2")):
        [report] = _probe(**{name: value})
        assert not report["applied"], name


def _huge_pages_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@glibc
@pytest.mark.slow
def test_reexec_starts_the_command_again_with_glibc_tunables(tmp_path):
    # 72 MiB does not fit in a worker arena's 64 MiB heap: glibc mmaps it afresh at every
    # allocation whatever mallopt says (4 KiB faults: 20 × 18,432). After the re-execution glibc
    # madvises its mmaps for transparent huge pages: 2 MiB faults.
    first, second = _probe("72", reexec=True, tmp_path=tmp_path)
    assert first["tunables"] is None and first["applied"]
    assert second["tunables"] == malloc_tuning.GLIBC_TUNABLES_VALUE and second["applied"]
    assert first["worker_faults"] >= 20 * (72 << 8) // 2, first
    if _huge_pages_available():
        assert second["worker_faults"] < first["worker_faults"] / 20, (first, second)


@glibc
def test_reexec_is_skipped_when_opted_out_or_set_by_the_user(tmp_path):
    for env in ({"MLJAX_MALLOC_TUNING": "0"}, {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": ""}):
        reports = _probe("1", reexec=True, tmp_path=tmp_path, **env)
        assert len(reports) == 1, (env, reports)
    reports = _probe("1", "--help", reexec=True, tmp_path=tmp_path)
    assert len(reports) == 1


@glibc
@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, {"GLIBC_TUNABLES": malloc_tuning.GLIBC_TUNABLES_VALUE}),
        ({"MLJAX_MALLOC_TUNING": "off"}, {}),
        ({"MALLOC_ARENA_MAX": "2"}, {}),
        ({"GLIBC_TUNABLES": ""}, {}),
    ],
)
def test_command_line_environment_and_its_shell_form(env, expected, monkeypatch):
    """What the re-execution adds (and the Makefile's test targets pass to pytest): the
    tunables, or nothing where the user's environment decides; `python -m` prints it."""
    for name in ("MLJAX_MALLOC_TUNING", *malloc_tuning._USER_SETTINGS):  # as _probe clears
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert malloc_tuning.command_line_environment() == expected
    printed = subprocess.run(
        [sys.executable, "-m", "mljax.malloc_tuning"],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    ).stdout.split()  # fmt: skip
    assert printed == [f"GLIBC_TUNABLES={malloc_tuning.GLIBC_TUNABLES_VALUE}"] * bool(expected)
