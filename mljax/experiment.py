"""The experiment protocol: how a thin ``experiments/<name>.py`` module plugs into the runner.

An experiment module defines:

* ``NAME``: its registry name (``python -m experiments.<NAME>``);
* ``Config``: a frozen dataclass deriving from :class:`mljax.config.CommonConfig`;
* ``run(config, run_dir) -> dict``: does the work by calling tested library code, writes its
  figures into ``run_dir`` and returns the metrics (JSON-able: see
  :func:`mljax.results.to_jsonable`);
* ``report_rows(metrics) -> list[ReportRow]``: one row per figure of the source report,
  the seed's value beside ours;
* optionally ``report_notes(metrics) -> str``: markdown written above that table (why our
  numbers differ from the source report, where they do);

and ends with ``if __name__ == "__main__": raise SystemExit(cli_main(sys.modules[__name__]))``.

:func:`execute` then writes ``config.json`` before the run and ``metrics.json`` and
``report.md`` after it, each atomically.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mljax import distributed
from mljax.config import enable_compilation_cache, parse
from mljax.distributed import is_main_process
from mljax.malloc_tuning import tune_for_command_line
from mljax.results import RunDir

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "ReportRow",
    "cli_main",
    "default_out_dir",
    "execute",
    "figure_links",
    "format_mean_std",
    "interrupts_stop_the_run",
    "markdown_table",
    "render_report",
    "run_figures",
    "run_guarded",
    "start_cluster",
    "summarize",
]


DEFAULT_RESULTS_DIR = "results"


@dataclasses.dataclass(frozen=True)
class ReportRow:
    """One line of a report: a figure the source report gives, and ours beside it.

    Attributes:
        figure: what is measured, e.g. ``"k=4, GMM: adjusted Rand index"``.
        seed_value: the source report's number as printed (``"—"`` where it gives none).
        ours: our value, usually ``"mean ± std (n seeds)"``.
        note: optional remark (agreement, why a value is absent).
    """

    figure: str
    seed_value: str
    ours: str
    note: str = ""


def summarize(values: Any) -> dict[str, float]:
    """Mean, std (population, ddof=0), min, max and count of a sample, ignoring NaN.

    Args:
        values: any array-like of numbers, e.g. one metric per seed ``[seeds]``.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.size),
    }


def format_mean_std(mean: float | None, std: float | None = None, *, digits: int = 3) -> str:
    """Formats ``mean ± std`` with ``digits`` significant digits (``"n/a"`` for missing)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}g}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{max(1, digits - 1)}g}"
    return text


def default_out_dir(name: str) -> Path:
    return Path(os.environ.get("MLJAX_RESULTS_DIR", DEFAULT_RESULTS_DIR)) / name


def render_report(
    title: str,
    rows: Sequence[ReportRow],
    *,
    preamble: str = "",
    figures: Sequence[str] = (),
) -> str:
    """Markdown for one experiment's ``report.md``.

    Args:
        title: the heading.
        rows: the table, ours beside the source report's numbers.
        preamble: markdown placed above the table.
        figures: image paths relative to the report, shown inline below the table.
    """
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += markdown_table(
        ["figure", "source report", "ours", "note"],
        [[r.figure, r.seed_value, r.ours, r.note] for r in rows],
    )
    lines += figure_links(figures)
    return "\n".join(lines) + "\n"


def figure_links(figures: Sequence[str], heading: str = "## Figures") -> list[str]:
    """Markdown lines showing each image inline (``![stem](path)``), under ``heading``."""
    if not figures:
        return []
    lines = ["", heading, ""]
    for path in figures:
        lines += [f"![{Path(path).stem}]({path})", ""]
    return lines[:-1]


def run_figures(run_dir: RunDir) -> list[str]:
    """The PNG figures a run wrote, as file names relative to its directory, sorted."""
    return sorted(p.name for p in run_dir.path.glob("*.png"))


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> list[str]:
    """A GitHub markdown table as a list of lines (``|`` inside cells is escaped).

    ``align``: one letter per column, ``l`` (default) or ``r`` (numbers), e.g. ``"lrlr"``.
    """
    if align is not None and (len(align) != len(header) or set(align) - {"l", "r"}):
        raise ValueError(f"align must be one of l/r per column ({len(header)}), got {align!r}")

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    rules = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    out = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join(rules) + "|",
    ]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _check_module(module: ModuleType) -> None:
    missing = [a for a in ("NAME", "Config", "run", "report_rows") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"experiment module {module.__name__} lacks {', '.join(missing)}")


def execute(module: ModuleType, config: Any) -> tuple[dict[str, Any], RunDir]:
    """Runs one experiment with a built config and writes its run directory.

    In a multi-process run every process runs the experiment; only process 0 writes
    (the others get a ``RunDir`` with ``writes=False``).

    Returns:
        ``(metrics, run_dir)``. ``metrics`` also gets ``"wall_time_s"``.
    """
    _check_module(module)
    if hasattr(config, "validate"):
        config.validate()
    out = config.out if getattr(config, "out", None) else default_out_dir(module.NAME)
    run_dir = RunDir.create(out, writes=is_main_process())
    run_dir.write_config({"experiment": module.NAME, "config": config})
    start = time.perf_counter()
    metrics = dict(module.run(config, run_dir))
    metrics["wall_time_s"] = time.perf_counter() - start
    run_dir.write_metrics(metrics)
    title = (
        f"{module.NAME}: {(module.__doc__ or '').strip().splitlines()[0] if module.__doc__ else ''}"
    )
    # Optional ``report_notes(metrics) -> str``: markdown placed above the table (e.g. why a
    # number differs from the source report).
    notes = module.report_notes(metrics) if hasattr(module, "report_notes") else ""
    run_dir.write_report(
        render_report(
            title.rstrip(": "),
            module.report_rows(metrics),
            preamble=notes,
            figures=run_figures(run_dir),
        )
    )
    return metrics, run_dir


@contextlib.contextmanager
def interrupts_stop_the_run(retry_s: float = 0.2):
    """Ctrl-C (SIGINT) always ends the block with ``KeyboardInterrupt``.

    Python drops an exception raised while it runs a garbage-collection callback ("Exception
    ignored in ... _xla_gc_callback"), so a Ctrl-C that lands there was lost and the run went
    on. Inside this block the first SIGINT raises ``KeyboardInterrupt`` and, until the block
    has seen it, raises it again every ``retry_s`` seconds. Only in the main thread; elsewhere
    (and with SIGINT ignored) the block runs unchanged. A block that ends normally after a
    SIGINT it never saw raises ``KeyboardInterrupt`` at its end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield
        return
    seen = threading.Event()
    lock = threading.Lock()

    def reraise_until_seen():
        while not seen.wait(retry_s):
            with lock:  # never trip the handler once the block has seen the interrupt
                if not seen.is_set():
                    _thread.interrupt_main()

    received = threading.Event()

    def on_sigint(signum, frame):
        if seen.is_set():
            return  # a re-raise that was already on its way
        received.set()
        if not any(t.name == "mljax-interrupt" for t in threading.enumerate()):
            threading.Thread(target=reraise_until_seen, name="mljax-interrupt", daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
        if received.is_set():  # swallowed, and the block ended before a re-raise came
            raise KeyboardInterrupt
    finally:
        with lock:
            seen.set()
        for _ in range(8):  # backward jumps: a pending re-raise runs (and returns) here
            pass
        signal.signal(signal.SIGINT, previous)


def start_cluster(config: Any):
    """Joins a multi-process run as ``config``'s cluster options say
    (:func:`mljax.distributed.start`); None for a single-process run."""
    return distributed.start(
        getattr(config, "coordinator", None),
        getattr(config, "num_processes", None),
        getattr(config, "process_id", None),
        getattr(config, "distributed", False),
    )


def run_guarded(cluster: Any):
    """The context of a command's work: Ctrl-C always stops it
    (:func:`interrupts_stop_the_run`) and, in a multi-process run, so does a lost process
    (:meth:`mljax.distributed.Cluster.interruptible`)."""
    stack = contextlib.ExitStack()
    stack.enter_context(interrupts_stop_the_run())
    if cluster is not None:
        stack.enter_context(cluster.interruptible())
    return stack


def _run_command(module: ModuleType, config: Any, cluster: Any) -> int:
    """Runs the experiment; returns the exit status (0, 1 lost process, 2 bad input,
    130 interrupted)."""
    try:
        with run_guarded(cluster):
            metrics, run_dir = execute(module, config)
            if run_dir.writes:
                print(
                    f"{module.NAME}: finished in {metrics['wall_time_s']:.1f} s; "
                    f"report at {run_dir.file('report.md')}"
                )
    except KeyboardInterrupt:
        if cluster is not None and cluster.lost is not None:
            return 1  # Cluster.finish says which process was lost
        print(
            "\ninterrupted: files already written in the run directory are complete.",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError) as e:  # bad input, a missing dataset, an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        if cluster is None:
            raise
        traceback.print_exc()  # and tell the other processes (Cluster.finish)
        return 1
    return 0


def cli_main(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m experiments.<name>``: parse, run, say where results are.

    Run as a script (the module is ``__main__``), the command first re-executes itself with
    glibc malloc tunables (:func:`mljax.malloc_tuning.tune_for_command_line`). With cluster
    options (``--coordinator``/``--num-processes``/``--process-id`` or ``--distributed``)
    it joins the other processes before any JAX computation (:func:`start_cluster`); then
    only process 0 writes the run directory and shows progress, and every process exits 0
    only when process 0 succeeded (:meth:`mljax.distributed.Cluster.finish`).
    """
    _check_module(module)
    if module.__name__ == "__main__":
        tune_for_command_line()
    doc = (module.__doc__ or "").strip()
    try:
        config = parse(
            module.Config,
            argv,
            prog=f"python -m experiments.{module.NAME}",
            description=doc or None,
        )
        cluster = start_cluster(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    enable_compilation_cache()
    code = _run_command(module, config, cluster)
    return code if cluster is None else cluster.finish(code)
