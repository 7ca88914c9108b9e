"""Multi-process runs: the cluster options, the watchdog, and real two-process runs on
127.0.0.1 (subprocesses: that is what is tested) of tests/distributed_check.py, an 8-member
sweep through the experiment CLI, against the same sweep run in this process."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import playground, reproduce
from mljax import distributed
from mljax.config import parse
from mljax.experiment import cli_main, interrupts_stop_the_run

sys.path.insert(0, str(Path(__file__).parent))
import distributed_check

CHECK = Path(__file__).parent / "distributed_check.py"
RUN_S = 240  # hard limit for one process of a test run (they take ~20 s here)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:1234", ("127.0.0.1", 1234)),
        ("node-3.cluster:29500", ("node-3.cluster", 29500)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_address(text, expected):
    assert distributed.parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["localhost", ":1234", "host:", "host:0", "host:65536", "host:12ab", "host:-1", ""]
)
def test_malformed_address_is_a_value_error(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.parse_address(text)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"process_id": 1}, "--process-id need.* --coordinator"),
        ({"num_processes": 2}, "--num-processes need.* --coordinator"),
        ({"coordinator": "127.0.0.1:1234"}, "needs --num-processes N and --process-id I"),
        ({"coordinator": "127.0.0.1:1234", "num_processes": 2}, "--process-id I"),
        ({"coordinator": "127.0.0.1", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, r"in \[0, 2\)"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": -1}, r"in \[0, 2\)"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, ">= 1"),
        ({"distributed": True, "process_id": 0}, "do not also give --process-id"),
    ],
)
def test_bad_cluster_options_are_value_errors(options, match):
    args = {"coordinator": None, "num_processes": None, "process_id": None} | options
    with pytest.raises(ValueError, match=match):
        distributed.check_options(**args)


def test_good_cluster_options_pass():
    distributed.check_options(None, None, None)
    distributed.check_options(None, None, None, distributed=True)
    distributed.check_options("10.0.0.1:29500", 4, 3)
    assert distributed.start() is None  # nothing set: one process, nothing started
    assert distributed.is_main_process()


def test_start_without_a_cluster_is_a_value_error(monkeypatch):
    """--distributed outside any cluster environment (and, here, after JAX has started)."""
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    before = jax.config.jax_cpu_collectives_implementation
    with pytest.raises(ValueError, match="could not join the run through the cluster"):
        distributed.start(distributed=True)
    assert jax.config.jax_cpu_collectives_implementation == before
    assert not jax.distributed.is_initialized()


def test_cluster_options_on_every_command_line(tmp_path, capsys):
    """Experiments and reproduce parse the options and refuse bad ones before any work."""
    argv = ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"]
    config = parse(playground.Config, argv)
    assert (config.coordinator, config.num_processes, config.process_id) == ("h:1", 2, 1)
    assert parse(reproduce.Config, ["--distributed"]).distributed
    out = tmp_path / "never"
    assert cli_main(playground, ["--process-id", "1", "--quick", "--out", str(out)]) == 2
    assert "--coordinator HOST:PORT" in capsys.readouterr().err
    bad = ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "5", "--out", str(out)]
    assert reproduce.main(bad) == 2
    assert "--process-id must be in [0, 2)" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- watchdog


class FakeStore:
    """The coordinator's key-value store, in memory (the client methods Cluster uses)."""

    def __init__(self, entries=None, broken: bool = False):
        self.entries = dict(entries or {})
        self.broken = broken

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.broken:
            raise RuntimeError("UNAVAILABLE: connection refused")
        self.entries[key] = value

    def key_value_dir_get(self, prefix):
        if self.broken:
            raise RuntimeError("UNAVAILABLE: connection refused")
        return [(k, v) for k, v in self.entries.items() if k.startswith(prefix)]


@pytest.mark.parametrize(
    "store, verdict",
    [
        (FakeStore(), "process 1 of 2 was lost: no sign of life for 0.5 s"),
        (
            FakeStore({"mljax/failed/1": "exit 2"}),
            r"process 1 of 2 stopped with an error \(exit 2\)",
        ),
        (FakeStore(broken=True), r"lost the coordinator \(process 0 of 2\)"),
    ],
    ids=["silent", "failed", "no-coordinator"],
)
def test_watchdog_verdict_interrupts_the_run(store, verdict, monkeypatch):
    """A silent peer (its beat never moves), one that reported an error, or an unreachable
    store: the run inside ``interruptible`` gets KeyboardInterrupt, ``lost`` names it.

    The run is guarded as the command line guards it (``interrupts_stop_the_run`` around
    ``interruptible``: Python drops a KeyboardInterrupt that lands in a gc callback, and the
    guard raises it again), and the watchdog's last resort, ending the process after
    GRACE_S, is recorded instead of ending the pytest worker."""
    monkeypatch.setattr(distributed, "BEAT_S", 0.1)  # beat and look ten times a second
    ended = []
    monkeypatch.setattr(distributed, "_exit", lambda code, message: ended.append(message))
    cluster = distributed.Cluster(store, 0, 2, lost_after_s=0.5)
    start = time.monotonic()
    cluster.start_watchdog()
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            interrupts_stop_the_run(retry_s=0.05),
            cluster.interruptible(),
        ):
            while time.monotonic() - start < 20:
                time.sleep(0.01)
    finally:
        cluster._stop.set()  # before GRACE_S: the watchdog never gets to end the process
    assert time.monotonic() - start < 5
    assert not ended
    assert threading.current_thread() is threading.main_thread()
    assert cluster.lost is not None
    assert re.search(verdict, cluster.lost), cluster.lost


def test_watchdog_interrupt_dropped_by_a_gc_callback_comes_again(monkeypatch):
    """The watchdog's KeyboardInterrupt lands while the main thread is in a gc callback,
    where Python drops it: under the command line's guard the interrupt comes again and
    stops the run, instead of the watchdog ending the process after GRACE_S."""
    import gc

    monkeypatch.setattr(distributed, "BEAT_S", 0.1)
    ended = []
    monkeypatch.setattr(distributed, "_exit", lambda code, message: ended.append(message))
    cluster = distributed.Cluster(FakeStore(), 0, 2, lost_after_s=0.3)
    dropped = []

    def slow_callback(phase, info):  # holds the main thread until the verdict has come
        if phase == "start" and not dropped:
            dropped.append(True)
            cluster._verdict.wait(5)
            time.sleep(0.5)  # the interrupt arrives in here; Python drops it

    start = time.monotonic()
    cluster.start_watchdog()
    gc.callbacks.append(slow_callback)
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            interrupts_stop_the_run(retry_s=0.05),
            cluster.interruptible(),
        ):
            gc.collect()
            while time.monotonic() - start < 8:
                time.sleep(0.01)
    finally:
        gc.callbacks.remove(slow_callback)
        cluster._stop.set()
    assert dropped and cluster.lost is not None
    assert time.monotonic() - start < 4 and not ended


def test_watchdog_quiet_while_peers_beat(monkeypatch):
    """A peer whose beat moves is never declared lost; the process's own beat is written."""
    monkeypatch.setattr(distributed, "BEAT_S", 0.1)  # beat and look ten times a second
    ended = []
    monkeypatch.setattr(distributed, "_exit", lambda code, message: ended.append(message))
    store = FakeStore()
    cluster = distributed.Cluster(store, 1, 2, lost_after_s=0.5)
    cluster.start_watchdog()
    try:
        for beat in range(15):  # 1.5 s, three times lost_after_s
            store.entries["mljax/alive/0"] = str(beat)
            time.sleep(0.1)
    finally:
        cluster._stop.set()
    assert cluster.lost is None and not ended
    assert int(store.entries["mljax/alive/1"]) >= 1


# ----------------------------------------------------------------------------- two processes


def _load(npz: Path) -> list[np.ndarray]:
    with np.load(npz) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.fixture(scope="module")
def one_process():
    """The check sweep in this process on one device (no sharding): the reference."""
    return distributed_check.result_leaves(distributed_check.run_sweep(devices=None))


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # NaN (history after divergence) equals NaN


@pytest.mark.slow
def test_two_processes_equal_one_process_and_four_devices(
    one_process, launch, free_port, cluster_options, tmp_path
):
    """8 members over 2 processes (4 each) and over 4 simulated devices of one process: every
    member's final and best parameters, history and flags bit-identical to one device;
    process 1 gets the same full table (its digest) and writes nothing."""
    out = [tmp_path / "p0", tmp_path / "p1"]
    procs = [
        launch([CHECK, "--out", out[i], *cluster_options(free_port, 2, i)], f"p{i}")
        for i in range(2)
    ]
    four = launch(
        [CHECK, "--out", tmp_path / "four"],
        "four",
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    for p in (*procs, four):
        assert p.wait(RUN_S) == 0, "\n".join(q.output()[-3000:] for q in (*procs, four))
    assert not out[1].exists()  # only process 0 writes
    assert json.loads((out[0] / "metrics.json").read_text())["devices"] == 2
    assert json.loads((tmp_path / "four" / "metrics.json").read_text())["devices"] == 4
    _assert_same(_load(out[0] / "sweep.npz"), one_process)
    _assert_same(_load(tmp_path / "four" / "sweep.npz"), one_process)
    digest = distributed_check.digest(one_process)
    assert f"process 1: digest {digest}" in procs[1].output()
    assert sorted(p.name for p in out[0].iterdir()) == [
        "config.json",
        "metrics.json",
        "report.md",
        "sweep.npz",
    ]


def _wait_for(proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never printed {text!r}:\n{proc.output()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_lost_process_stops_the_other(killed, launch, free_port, cluster_options, tmp_path):
    """SIGKILL one of two processes mid-sweep: the other exits non-zero within 60 s with a
    message naming the lost one, and the run directory holds no partial file. Losing
    process 1: our watchdog's verdict. Losing process 0 (the coordinator, whose store the
    watchdog reads): JAX itself ends the survivor at once, naming the "leader task"."""
    out = tmp_path / "run"
    procs = [
        launch(
            [
                CHECK,
                "--rounds",
                "10000",
                "--out",
                out if i == 0 else tmp_path / "p1",
                *cluster_options(free_port, 2, i),
            ],
            f"p{i}",
        )
        for i in range(2)
    ]
    _wait_for(procs[1], "process 1: round 1 done", RUN_S)  # both in the sweep loop
    procs[killed].popen.send_signal(signal.SIGKILL)
    start = time.monotonic()
    survivor = procs[1 - killed]
    code = survivor.wait(60)
    assert time.monotonic() - start < 60
    assert code != 0
    text = survivor.output()
    if killed == 1:
        assert code == 1, text[-3000:]
        assert "error: process 1 of 2 was lost" in text, text[-3000:]
    else:
        assert "leader task" in text or "process 0 of 2" in text, text[-3000:]
    # Process 0 wrote config.json before the sweep and nothing else: no temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert json.loads((out / "config.json").read_text())["config"]["process_id"] == 0
    assert not (tmp_path / "p1").exists()
