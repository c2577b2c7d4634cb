"""Benchmark reports: a Markdown table with ratios to eager, and PNG plots (matplotlib).

Rows are in a reader's order: by workload kind (latency, model call, batch, loop, MD), then by
size (numerically), then by backend in :data:`~mlff_export.bench.availability.ALL_BACKENDS`
order. Plots mark the measured sizes on their axes, carry interquartile error bars, and the
speed-up bars carry their numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

from mlff_export.bench.availability import ALL_BACKENDS  # noqa: E402
from mlff_export.bench.machine_load import MachineLoad  # noqa: E402

KIND_ORDER = ("latency", "model", "batch", "loop", "md")
REFERENCE_CASE = "eager fp32"
SPEEDUP_WORKLOAD = "latency C6H6"


def _sort_key(record: dict) -> tuple:
    kind = record.get("kind", "")
    backend_rank = ALL_BACKENDS.index(record["backend"]) if record.get("backend") in ALL_BACKENDS else len(ALL_BACKENDS)
    return (
        KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER),
        record.get("num_structures", 0) if kind in ("batch", "loop") else record.get("num_atoms", 0),
        record.get("workload", ""),
        backend_rank,
        record.get("precision", "") != "fp32",
    )


def _eager_median(records: list[dict], workload: str) -> float | None:
    for record in records:
        if record.get("workload") == workload and record["case"] == REFERENCE_CASE and "median_s" in record:
            return record["median_s"]
    return None


def _number(value: float | None, digits: int = 3) -> str:
    """Significant digits, thousands separated; empty for None."""
    if value is None:
        return ""
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _notes(record: dict) -> str:
    notes = []
    if record.get("noisy"):
        q1, q3 = record["q1_s"], record["q3_s"]
        notes.append(f"noisy (IQR {100 * (q3 - q1) / record['median_s']:.0f}% of the median)")
    load = record.get("load") or {}
    if load.get("busy"):
        others = load.get("other_cpu_percent")
        notes.append(f"busy (others {others:.0f}% CPU)" if others is not None else f"busy (load average {load['load_average']:.1f})")
    if "parity" in record:
        notes.append(record["parity"])
    return "; ".join(notes)


COLUMNS = (
    "workload", "backend", "atoms", "median ms", "IQR ms", "structures/s", "MD steps/s", "MD drift eV",
    "speed-up vs eager", "max abs dE eV", "max abs dF eV/Å", "peak GPU MiB", "notes",
)


def _row(record: dict, records: list[dict]) -> list[str]:
    workload, case = record.get("workload", "(all)"), record["case"]
    if "error" in record:
        return [workload, case] + [""] * (len(COLUMNS) - 3) + [f"failed: {record['error']}"]
    eager = _eager_median(records, workload)
    q1, q3 = record.get("q1_s"), record.get("q3_s")
    md = record["kind"] == "md"
    return [
        workload,
        case,
        f"{record['num_atoms']:,}",
        f"{1e3 * record['median_s']:.3f}",
        f"{1e3 * q1:.3f}–{1e3 * q3:.3f}" if q1 is not None else "",
        "" if md else _number(record.get("structures_per_s")),
        _number(record.get("steps_per_s")) if md else "",
        f"{record['md_energy_drift_ev']:+.2e}" if md else "",
        f"{eager / record['median_s']:.2f}x" if eager else "",
        f"{record['max_abs_energy_error_ev']:.1e}" if "max_abs_energy_error_ev" in record else "",
        f"{record['max_abs_force_error_ev_per_a']:.1e}" if "max_abs_force_error_ev_per_a" in record else "",
        f"{record['peak_gpu_memory_mib']:.0f}" if "peak_gpu_memory_mib" in record else "",
        _notes(record),
    ]


def markdown_table(records: list[dict], environment: dict, not_run: dict[str, str], load: MachineLoad | None = None) -> str:
    """One row per (workload, case): median and IQR, throughput, MD rate and drift, speed-up over
    eager, parity, notes (noisy rows, busy machine); then the backends not run and why."""
    where = environment.get("gpu") or environment.get("cpu")
    lines = [
        f"Benchmark on {where} ({environment['device']}), torch {environment['libraries'].get('torch')}, "
        f"{environment['date']}. Medians after warm-up, each call synchronised; a row samples until its IQR is "
        "within 10% of its median (else it is marked noisy); speed-up = eager median / median in this same run; "
        "errors are vs eager FP32 on the same structures.",
        "",
    ]
    if load is not None:
        verdict = ("**busy: timings may be inflated**; re-run on a quiet machine (on a CPU, `--threads 1` suffers least)"
                   if load.busy else "quiet")
        lines += [f"Machine during the run: {load.describe()} ({verdict}).", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " ---: |" * (len(COLUMNS) - 3) + " --- |"]
    lines += ["| " + " | ".join(_row(record, records)) + " |" for record in sorted(records, key=_sort_key)]
    if not_run:
        lines += ["", "Not run here:", ""] + [f"- {backend}: {reason}" for backend, reason in not_run.items()]
    return "\n".join(lines) + "\n"


def _series(records: list[dict], kind: str, x_key: str) -> dict[str, list[dict]]:
    """case -> its measured records of ``kind``, sorted by ``x_key``."""
    series: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: (_sort_key(r)[3:], r.get(x_key, 0))):
        if record.get("kind") == kind and "median_s" in record and "error" not in record:
            series.setdefault(record["case"], []).append(record)
    return series


def _label_ticks(axis, values: list[float], minimum_gap: float) -> None:
    """Major ticks at ``values`` on a log ``axis``; labels only where they are at least
    ``minimum_gap`` decades from the previous label (so close sizes do not overlap)."""
    values = sorted(set(values))
    labels, last = [], -math.inf
    for value in values:
        if math.log10(value) - last >= minimum_gap:
            labels.append(f"{value:,.0f}")
            last = math.log10(value)
        else:
            labels.append("")
    axis.set_major_locator(FixedLocator(values))
    axis.set_ticklabels(labels)
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _errorbar_plot(
    series: dict[str, list[dict]], path: Path, x_key: str, y_of, xlabel: str, ylabel: str, title: str
) -> Path | None:
    """One line per case with interquartile error bars; ``y_of(seconds)`` maps a time to the plotted
    value. Returns None (and writes nothing) without data."""
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    xs_all = []
    for label, records in series.items():
        xs = [record[x_key] for record in records]
        ys = [y_of(record, record["median_s"]) for record in records]
        bounds = [sorted((y_of(r, r.get("q1_s", r["median_s"])), y_of(r, r.get("q3_s", r["median_s"])))) for r in records]
        errors = [[y - low for y, (low, _) in zip(ys, bounds)], [high - y for y, (_, high) in zip(ys, bounds)]]
        axes.errorbar(xs, ys, yerr=errors, marker="o", markersize=4, capsize=3, label=label)
        xs_all += xs
    axes.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    span = math.log10(max(xs_all) / min(xs_all)) if len(set(xs_all)) > 1 else 1.0
    _label_ticks(axes.xaxis, xs_all, minimum_gap=0.055 * span)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _speedup_plot(records: list[dict], path: Path, title: str) -> Path | None:
    """Horizontal bars: eager median / median on benzene through the calculator, with the number
    and an interquartile error bar on each bar."""
    eager = _eager_median(records, SPEEDUP_WORKLOAD)
    rows = sorted(
        (r for r in records if r.get("workload") == SPEEDUP_WORKLOAD and "median_s" in r and "error" not in r),
        key=_sort_key,
    )
    if not eager or not rows:
        return None
    speedups = [eager / r["median_s"] for r in rows]
    low = [s - eager / r["q3_s"] for s, r in zip(speedups, rows)]
    high = [eager / r["q1_s"] - s for s, r in zip(speedups, rows)]
    figure, axes = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.6))
    positions = range(len(rows))
    axes.barh(positions, speedups, xerr=[low, high], color="tab:green", capsize=3, error_kw={"elinewidth": 0.8})
    axes.set_yticks(list(positions), [r["case"] for r in rows])
    axes.invert_yaxis()
    for position, (speedup, extra) in enumerate(zip(speedups, high)):
        axes.text(speedup + extra, position, f" {speedup:.2f}x", va="center", fontsize=8)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlim(0, max(s + h for s, h in zip(speedups, high)) * 1.18)
    axes.set(xlabel=f"speed-up over eager fp32 (benzene through the calculator; eager {1e3 * eager:.2f} ms)",
             title=f"Speed-up — {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(records: list[dict], out: Path, title: str) -> list[Path]:
    """latency vs atoms, throughput vs batch size, and speed-up over eager on benzene; a plot
    without data is not written. Returns the paths written."""
    paths = [
        _errorbar_plot(
            _series(records, "latency", "num_atoms"), out / "latency_vs_atoms.png", "num_atoms",
            lambda record, seconds: 1e3 * seconds,
            "atoms", "ms per call (calculator, median; bars: IQR)", f"Latency vs size — {title}",
        ),
        _errorbar_plot(
            _series(records, "batch", "num_structures"), out / "throughput_vs_batch.png", "num_structures",
            lambda record, seconds: record["num_structures"] / seconds,
            "molecules per call (batch size)", "structures / s (median; bars: IQR)", f"Throughput vs batch — {title}",
        ),
        _speedup_plot(records, out / "speedup_benzene.png", title),
    ]
    return [path for path in paths if path is not None]
