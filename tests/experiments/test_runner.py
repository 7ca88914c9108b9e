"""The registry, the experiment protocol, `--help` of every experiment, and reproduce."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types

import pytest

import experiments
from experiments import reproduce
from mljax.config import CommonConfig, parse
from mljax.data.images import DatasetNotFoundError
from mljax.experiment import ReportRow, cli_main, execute, format_mean_std, summarize


@pytest.mark.parametrize("info", experiments.REGISTRY, ids=lambda i: i.name)
def test_help_works_for_every_registered_experiment(info, capsys):
    # In-process: the same generated parser `python -m experiments.<name> --help` uses,
    # without starting an interpreter per experiment (the entry point itself is tested below).
    module = info.load()
    with pytest.raises(SystemExit) as exc:
        cli_main(module, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--out", "--seeds"):
        assert option in out
    for field in dataclasses.fields(module.Config):
        assert "--" + field.name.replace("_", "-") in out, f"{field.name} not in --help"


@pytest.mark.slow
def test_module_entry_point_prints_help():
    name = experiments.REGISTRY[0].name
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_registry_entries_are_complete():
    names = [i.name for i in experiments.REGISTRY]
    assert len(names) == len(set(names))
    for info in experiments.REGISTRY:
        module = info.load()
        assert module.NAME == info.name
        assert info.seed_file and info.description
        assert issubclass(module.Config, CommonConfig)


@pytest.mark.slow
def test_list_command():
    out = subprocess.run(
        [sys.executable, "-m", "experiments", "--list"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for info in experiments.REGISTRY:
        assert info.name in out.stdout
    if not experiments.REGISTRY:
        assert "no experiments registered" in out.stdout


# ----------------------------------------------------------------------------- fake experiments


@dataclasses.dataclass(frozen=True)
class FakeConfig(CommonConfig):
    """A fake experiment's config."""

    level: float = 0.5
    """A level."""

    def validate(self):
        super().validate()
        if not 0 <= self.level <= 1:
            raise ValueError(f"--level must lie in [0, 1], got {self.level}")


def make_module(name, behaviour):
    m = types.ModuleType(f"experiments.{name}", f"Fake {name}.\n\nMore text.")
    m.NAME = name
    m.Config = FakeConfig

    def run(config, run_dir):
        if behaviour == "missing":
            raise DatasetNotFoundError(
                "dataset 'mnist' (split 'train') was found nowhere. Looked in:\n  - x"
            )
        if behaviour == "crash":
            raise RuntimeError("boom")
        run_dir.file("curves.png").write_bytes(b"\x89PNG fake")
        return {"value": summarize([config.level, config.level + 0.1 * config.seeds])}

    m.run = run
    m.report_rows = lambda metrics: [
        ReportRow(
            "value", "0.5", format_mean_std(metrics["value"]["mean"], metrics["value"]["std"])
        )
    ]
    return m


@pytest.fixture
def fake_registry(monkeypatch):
    mods = {
        n: make_module(n, b) for n, b in [("good", "ok"), ("nodata", "missing"), ("bad", "crash")]
    }
    registry = tuple(experiments.ExperimentInfo(n, "999_x.txt", "§1", f"fake {n}") for n in mods)
    monkeypatch.setattr(experiments, "REGISTRY", registry)
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, f"experiments.{n}", m)
    return mods


def test_execute_writes_config_metrics_report(tmp_path, fake_registry):
    cfg = FakeConfig(out=str(tmp_path / "good"), seeds=2, level=0.25)
    metrics, _run_dir = execute(fake_registry["good"], cfg)
    assert metrics["value"]["mean"] == pytest.approx(0.35)  # mean of 0.25 and 0.45
    cfg_json = (tmp_path / "good" / "config.json").read_text()
    assert '"level": 0.25' in cfg_json and '"experiment": "good"' in cfg_json
    report = (tmp_path / "good" / "report.md").read_text()
    assert report.startswith("# good: Fake good.")
    assert "| value | 0.5 | 0.35 ± 0.1 |" in report
    # The run's figures are shown inline, by links relative to the report.
    assert "## Figures\n\n![curves](curves.png)" in report


def test_config_validation_is_a_value_error():
    with pytest.raises(ValueError, match=r"--level must lie in \[0, 1\], got 2.0"):
        parse(FakeConfig, ["--level", "2"])
    with pytest.raises(ValueError, match="--seeds must be >= 1, got 0"):
        parse(FakeConfig, ["--seeds", "0"])


def test_reproduce_reports_every_outcome(tmp_path, fake_registry, capsys):
    code = reproduce.main(["--quick", "--out", str(tmp_path)])
    assert code == 1  # one experiment crashed
    text = (tmp_path / "REPORT.md").read_text()
    assert "Mode: **quick**; 3 experiment(s)" in text
    assert "| good | value | 0.5 |" in text
    assert "skipped: dataset 'mnist' (split 'train') was found nowhere" in text
    assert "failed: RuntimeError: boom" in text
    assert "boom" in (tmp_path / "bad" / "error.txt").read_text()
    assert (tmp_path / "good" / "metrics.json").exists()
    # Each experiment's figures inline, relative to REPORT.md; none for those that did not run.
    assert "## good\n\n![curves](good/curves.png)" in text
    assert "## nodata" not in text and "## bad" not in text


def test_reproduce_only_and_unknown(tmp_path, fake_registry):
    assert reproduce.main(["--out", str(tmp_path), "--only", "good", "--seeds", "3"]) == 0
    text = (tmp_path / "REPORT.md").read_text()
    assert "Mode: **full**; 1 experiment(s)" in text and "nodata" not in text
    assert '"seeds": 3' in (tmp_path / "good" / "config.json").read_text()
    assert reproduce.main(["--out", str(tmp_path), "--only", "nope"]) == 2


def test_reproduce_with_an_empty_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "REGISTRY", ())
    assert reproduce.main(["--quick", "--out", str(tmp_path)]) == 0
    assert "No experiments are registered yet" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.slow
def test_reproduce_help():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for option in ("--quick", "--out", "--only", "--seeds"):
        assert option in out.stdout


def test_summarize_and_format():
    s = summarize([1.0, 2.0, float("nan"), 3.0])
    assert s == {
        "mean": 2.0,
        "std": pytest.approx(0.816496580927726),
        "min": 1.0,
        "max": 3.0,
        "n": 3,
    }
    assert format_mean_std(0.53812, 0.01234) == "0.538 ± 0.012"
    assert format_mean_std(float("nan")) == "n/a"


def test_markdown_table_aligns_numbers_right_and_escapes_pipes():
    from mljax.experiment import markdown_table

    lines = markdown_table(["name", "value"], [["a|b", 1.5]], align="lr")
    assert lines == ["| name | value |", "|---|---:|", "| a\\|b | 1.5 |"]
    assert markdown_table(["x"], [[1]])[1] == "|---|"
    with pytest.raises(ValueError, match="align"):
        markdown_table(["x", "y"], [], align="lc")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_gc_callback_still_stops_the_run():
    """Python drops an exception raised inside a gc callback ("Exception ignored in ...
    _xla_gc_callback"): the Ctrl-C that landed there must come again, not be lost."""
    import gc
    import signal
    import time

    from mljax.experiment import interrupts_stop_the_run

    def interrupted_callback(phase, info):
        if phase == "start":
            gc.callbacks.remove(interrupted_callback)
            signal.raise_signal(signal.SIGINT)  # its KeyboardInterrupt is dropped by gc

    reached_loop = False
    with pytest.raises(KeyboardInterrupt), interrupts_stop_the_run(retry_s=0.05):
        gc.callbacks.append(interrupted_callback)
        gc.collect()
        reached_loop = True  # the first interrupt was swallowed, as in the bug
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert reached_loop
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_paths_and_seeds_are_one_line_errors_before_anything_is_written(tmp_path, capsys):
    import os

    blocker = tmp_path / "file"
    blocker.write_text("x")
    module = make_module("good", "ok")
    cases = [
        (["--out", str(blocker / "sub")], "is a file, not a directory"),
        (["--out", str(blocker)], "exists and is not a directory"),
        (["--seed", "99999999999999999999999"], "--seed must be an integer in [0, 4294967295]"),
        (["--seed", str(2**32)], "--seed must be an integer in [0, 4294967295]"),
    ]
    for argv, message in cases:
        assert cli_main(module, [*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # Permission denied (as root every path is writable: simulate what os.access reports).
    orig = os.access
    os.access = lambda path, mode: False
    try:
        with pytest.raises(ValueError, match="not writable"):
            parse(FakeConfig, ["--out", str(tmp_path / "new")])
    finally:
        os.access = orig


def test_data_dir_must_exist_and_be_readable(tmp_path):
    from mljax.config import check_input_dir

    with pytest.raises(ValueError, match="--data-dir .*: no such directory"):
        check_input_dir(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        check_input_dir(tmp_path / "f")
    assert check_input_dir(tmp_path) == tmp_path


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_ctrl_c_is_raised_when_the_block_ends_before_the_retry():
    import gc
    import signal

    from mljax.experiment import interrupts_stop_the_run

    def interrupted_callback(phase, info):
        if phase == "start":
            gc.callbacks.remove(interrupted_callback)
            signal.raise_signal(signal.SIGINT)

    # No retry in time: the end of the block raises it.
    with pytest.raises(KeyboardInterrupt), interrupts_stop_the_run(retry_s=60.0):
        gc.callbacks.append(interrupted_callback)
        gc.collect()
