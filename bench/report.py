"""Benchmark reports: a Markdown table with ratios to eager, and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend


def _milliseconds(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}"


def _eager_median(records: list[dict], workload: str) -> float | None:
    for record in records:
        if record.get("workload") == workload and record["case"] == "eager fp32" and "median_s" in record:
            return record["median_s"]
    return None


def markdown_table(records: list[dict], environment: dict, not_run: dict[str, str]) -> str:
    """One row per (workload, case): median and IQR, throughput, speed-up over eager, parity."""
    where = environment.get("gpu") or environment.get("cpu")
    lines = [
        f"Benchmark on {where} ({environment['device']}), torch {environment['libraries'].get('torch')}, "
        f"{environment['date']}. Medians after warm-up, each call synchronised; speed-up = eager median / median "
        "in this same run; errors are vs eager FP32 on the same structures.",
        "",
        "| workload | backend | median ms | IQR ms | structures/s | atom-steps/s | speed-up vs eager | max abs dE eV | max abs dF eV/Å | peak GPU MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for record in sorted(records, key=lambda r: (r.get("workload", ""), r["case"])):
        if "error" in record:
            lines.append(f"| {record.get('workload', '(all)')} | {record['case']} | failed: {record['error']} |||||||||")
            continue
        eager = _eager_median(records, record["workload"])
        speedup = f"{eager / record['median_s']:.2f}x" if eager else ""
        q1, q3 = record.get("q1_s"), record.get("q3_s")
        iqr = f"{_milliseconds(q1)}-{_milliseconds(q3)}" if q1 is not None else ""
        structures = f"{record['structures_per_s']:.1f}" if "structures_per_s" in record else ""
        if record["kind"] == "md":
            structures = f"{record['steps_per_s']:.1f} steps/s, drift {record['md_energy_drift_ev']:+.2e} eV"
        memory = f"{record['peak_gpu_memory_mib']:.0f}" if "peak_gpu_memory_mib" in record else ""
        energy_error = f"{record['max_abs_energy_error_ev']:.1e}" if "max_abs_energy_error_ev" in record else ""
        force_error = f"{record['max_abs_force_error_ev_per_a']:.1e}" if "max_abs_force_error_ev_per_a" in record else ""
        lines.append(
            f"| {record['workload']} | {record['case']} | {_milliseconds(record['median_s'])} | {iqr} | {structures} | "
            f"{record['atom_steps_per_s']:.3g} | {speedup} | {energy_error} | {force_error} | {memory} |"
        )
    if not_run:
        lines += ["", "Not run here:", ""] + [f"- {backend}: {reason}" for backend, reason in not_run.items()]
    return "\n".join(lines) + "\n"


def _series(records: list[dict], kind: str, x_key: str, y_key: str) -> dict[str, tuple[list, list]]:
    series: dict[str, tuple[list, list]] = {}
    for record in sorted(records, key=lambda r: r.get(x_key, 0)):
        if record.get("kind") == kind and y_key in record and "error" not in record:
            xs, ys = series.setdefault(record["case"], ([], []))
            xs.append(record[x_key])
            ys.append(record[y_key])
    return series


def _line_plot(series: dict[str, tuple[list, list]], path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    axes.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(records: list[dict], out: Path, title: str) -> list[Path]:
    """latency vs atoms, throughput vs batch size, and speed-up over eager on benzene."""
    latency = {
        label: (atoms, [1e3 * s for s in seconds])
        for label, (atoms, seconds) in _series(records, "latency", "num_atoms", "median_s").items()
    }
    paths = [
        _line_plot(latency, out / "latency_vs_atoms.png", "atoms", "ms per call (calculator)", f"Latency vs size — {title}"),
        _line_plot(
            _series(records, "batch", "num_structures", "structures_per_s"),
            out / "throughput_vs_batch.png",
            "molecules per call",
            "structures / s",
            f"Throughput vs batch — {title}",
        ),
    ]
    eager = _eager_median(records, "latency C6H6")
    bars = [
        (record["case"], eager / record["median_s"])
        for record in records
        if record.get("workload") == "latency C6H6" and "median_s" in record and "error" not in record and eager
    ]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.barh([label for label, _ in bars], [speedup for _, speedup in bars], color="tab:green")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set(xlabel="speed-up over eager (benzene, calculator call)", title=f"Speed-up — {title}")
    paths.append(out / "speedup_benzene.png")
    figure.tight_layout()
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    return paths
