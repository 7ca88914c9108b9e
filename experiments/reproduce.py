"""Run every registered experiment and collect the results into one REPORT.md.

Each experiment writes its own run directory under ``--out`` (``<out>/<name>/``); REPORT.md
holds one table row per figure of the source reports, the seed's value beside ours
(mean ± std over seeds). An experiment that cannot run (its dataset is not installed, say)
gets a row that says why instead of stopping the others; one whose module defines
``fallback_config(config)`` (and ``describe_config(config)``) then runs that variant instead,
e.g. ``mnist_table`` on Fashion-MNIST where MNIST is missing.

With cluster options (``--coordinator``/``--num-processes``/``--process-id`` or
``--distributed``) every process runs every experiment and process 0 alone writes (see
:func:`mljax.experiment.cli_main`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import experiments
from mljax.config import ClusterConfig, enable_compilation_cache, parse
from mljax.data.images import DatasetNotFoundError
from mljax.distributed import is_main_process
from mljax.experiment import (
    ReportRow,
    execute,
    figure_links,
    markdown_table,
    run_figures,
    run_guarded,
    start_cluster,
)
from mljax.malloc_tuning import tune_for_command_line
from mljax.results import atomic_write_text

NAME = "reproduce"


@dataclasses.dataclass(frozen=True)
class Config(ClusterConfig):
    """Run every registered experiment and write REPORT.md."""

    quick: bool = False
    """Run each experiment in its quick mode (the whole registry in a few minutes on 2 CPU cores)."""

    out: str = "results/reproduce"
    """Directory for REPORT.md and one sub-directory per experiment."""

    only: tuple[str, ...] = ()
    """Run only these experiments (registry names); default: all."""

    seeds: int | None = None
    """Override every experiment's number of seeds (default: each experiment's own)."""

    quiet: bool = False
    """Hide progress bars."""

    def validate(self) -> None:
        self.check_cluster()
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        for name in self.only:
            experiments.get(name)


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # "ok", "skipped" (cannot run here), "failed"
    seconds: float
    rows: list[ReportRow]
    reason: str = ""
    figures: tuple[str, ...] = ()  # PNG paths relative to REPORT.md


def run_one(info: experiments.ExperimentInfo, config: Config) -> Outcome:
    out_dir = Path(config.out) / info.name
    start = time.perf_counter()
    try:
        module = info.load()
        overrides = {"quick": config.quick, "out": str(out_dir), "quiet": config.quiet}
        if config.seeds is not None:
            overrides["seeds"] = config.seeds
        exp_config = dataclasses.replace(module.Config(), **overrides)
        metrics, run_dir = execute(module, exp_config)
        rows = list(module.report_rows(metrics))
        figures = tuple(f"{info.name}/{name}" for name in run_figures(run_dir))
        return Outcome(info.name, "ok", time.perf_counter() - start, rows, figures=figures)
    except DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        if hasattr(module, "fallback_config"):  # e.g. mnist_table: Fashion-MNIST instead
            return _run_fallback(info, module, exp_config, first, start)
        return Outcome(info.name, "skipped", time.perf_counter() - start, [], first)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "error.txt", traceback.format_exc())
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        return Outcome(info.name, "failed", time.perf_counter() - start, [], reason)


def _run_fallback(info, module, exp_config, reason: str, start: float) -> Outcome:
    """Runs the module's ``fallback_config(config)`` (the same study on another dataset, or
    None for none) after its own dataset was not found; the report keeps a "not run" row
    for the original, with the reason (``describe_config(config)`` names each variant)."""
    fallback = module.fallback_config(exp_config)
    if fallback is None:
        return Outcome(info.name, "skipped", time.perf_counter() - start, [], reason)
    not_run = ReportRow(f"(not run) {module.describe_config(exp_config)}", "—", "—", reason)
    try:
        metrics, run_dir = execute(module, fallback)
    except DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        return Outcome(info.name, "skipped", time.perf_counter() - start, [], f"{reason}; {first}")
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if is_main_process():
            out_dir = Path(fallback.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "error.txt", traceback.format_exc())
        failed = f"{type(e).__name__}: {e}".splitlines()[0]
        return Outcome(info.name, "failed", time.perf_counter() - start, [not_run], failed)
    rows = [not_run, *module.report_rows(metrics)]
    figures = tuple(f"{info.name}/{name}" for name in run_figures(run_dir))
    note = f"{reason}; ran {module.describe_config(fallback)} instead"
    return Outcome(info.name, "ok", time.perf_counter() - start, rows, note, figures)


def render(outcomes: Sequence[Outcome], config: Config, total_s: float) -> str:
    lines = ["# mljax: reproduction report", ""]
    mode = "quick" if config.quick else "full"
    lines.append(
        f"Mode: **{mode}**; {len(outcomes)} experiment(s); total wall time {total_s:.1f} s."
    )
    lines.append(
        "Ours: mean ± std over seeds. Each experiment's own report.md, metrics.json and "
        "figures are in its sub-directory."
    )
    lines.append("")
    if not outcomes:
        lines.append("No experiments are registered yet (see `python -m experiments --list`).")
        return "\n".join(lines) + "\n"
    lines += markdown_table(
        ["experiment", "source", "status", "time (s)"],
        [
            [
                o.name,
                f"{experiments.get(o.name).seed_file} {experiments.get(o.name).section}",
                o.status if not o.reason else f"{o.status}: {o.reason}",
                f"{o.seconds:.1f}",
            ]
            for o in outcomes
        ],
    )
    lines.append("")
    table = []
    for o in outcomes:
        if o.status == "ok":
            table += [[o.name, r.figure, r.seed_value, r.ours, r.note] for r in o.rows]
        else:
            table.append([o.name, "(not run)", "—", "—", f"{o.status}: {o.reason}"])
    lines += markdown_table(["experiment", "figure", "source report", "ours", "note"], table)
    for o in outcomes:
        lines += figure_links(o.figures, heading=f"## {o.name}")
    return "\n".join(lines) + "\n"


def run_all(config: Config) -> list[Outcome]:
    """Every selected experiment in turn; REPORT.md rewritten after each. In a
    multi-process run only process 0 writes it and prints the progress lines.

    Raises:
        KeyboardInterrupt: Ctrl-C, or a lost process; the report keeps what was done.
    """
    infos = [i for i in experiments.REGISTRY if not config.only or i.name in config.only]
    main = is_main_process()
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    report_path = Path(config.out) / "REPORT.md"
    try:
        for info in infos:
            if main:
                print(f"[{len(outcomes) + 1}/{len(infos)}] {info.name} ...", flush=True)
            outcome = run_one(info, config)
            outcomes.append(outcome)
            if not main:
                continue
            print(
                f"    {outcome.status} in {outcome.seconds:.1f} s"
                + (f": {outcome.reason}" if outcome.reason else ""),
                flush=True,
            )
            # Rewritten after every experiment: Ctrl-C keeps what is done so far.
            atomic_write_text(report_path, render(outcomes, config, time.perf_counter() - start))
    except KeyboardInterrupt:
        if main:
            print(f"\ninterrupted; partial report at {report_path}", file=sys.stderr)
        raise
    if main:
        atomic_write_text(report_path, render(outcomes, config, time.perf_counter() - start))
        print(f"report written to {report_path}")
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse(
            Config,
            argv,
            prog="python -m experiments.reproduce",
            description=(__doc__ or "").strip(),
        )
        cluster = start_cluster(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    enable_compilation_cache()
    try:
        with run_guarded(cluster):
            outcomes = run_all(config)
        failed = [o.name for o in outcomes if o.status == "failed"]
        if failed:
            print(f"failed: {', '.join(failed)} (tracebacks in their error.txt)", file=sys.stderr)
        code = 1 if failed else 0
    except KeyboardInterrupt:
        code = 1 if cluster is not None and cluster.lost is not None else 130
    return code if cluster is None else cluster.finish(code)


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
