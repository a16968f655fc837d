"""Run the dssl performance benchmarks, print a Markdown report and write ``results.json``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full run, about 5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/run.py --quick    # fewer repeats and trials, about 4 minutes

Measured in one run, in this order:

1. the single-thread matrix-multiply speed at the model's shapes in float32 and bfloat16
   (the compute ceilings);
2. step-1 and step-2 training throughput at the reference configuration on one thread, with
   ``precision: fp32`` (the default) and ``precision: bf16-mixed``;
3. the cost of each call one training batch makes;
4. the peak memory of a fresh process that trains both steps for one epoch on 90,000 rows;
5. the fixed platform cost per trial of 1-worker and 2-worker studies, and the study start-up.

The number of busy CPUs during each part and the load average around it are recorded. Other
jobs on the machine slow every number down, so repeat a run in which a single-threaded part
(sgemm, step throughput, per-call costs, peak memory) kept clearly more than 1 CPU busy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks import overhead, peak_memory, throughput  # noqa: E402

logger = logging.getLogger("benchmarks.run")

TARGETS = {
    "step1_samples_per_s": 40_000.0,
    "step2_samples_per_s": 25_000.0,
    "step1_bf16_samples_per_s": 40_000.0,
    "step2_bf16_samples_per_s": 25_000.0,
    "peak_rss_mib": 1024.0,
    "single_worker_overhead_s": 3.0,
}


def _settings(quick: bool) -> dict[str, int]:
    if quick:
        return {
            "throughput_repeats": 3,
            "batches_per_block": 10,
            "component_repeats": 30,
            "sgemm_repeats": 30,
            "overhead_trials": 3,
        }
    return {
        "throughput_repeats": 9,
        "batches_per_block": 40,
        "component_repeats": 200,
        "sgemm_repeats": 200,
        "overhead_trials": 5,
    }


def _command_output(arguments: list[str]) -> str:
    try:
        return subprocess.run(arguments, capture_output=True, text=True, check=False, cwd=REPO_ROOT).stdout.strip()
    except OSError:
        return ""


def _machine() -> dict[str, Any]:
    """Describe the CPU, the software versions and the checkout."""
    lscpu = _command_output(["lscpu"])
    fields = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    config = torch.__config__.show()
    blas = next((line.strip(" -") for line in config.splitlines() if "Math Kernel Library" in line), "")
    return {
        "cpu_model": fields.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "threads_per_core": fields.get("Thread(s) per core"),
        "hypervisor": fields.get("Hypervisor vendor"),
        "cpu_mhz": _cpu_mhz(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "blas": blas,
        "git_commit": _command_output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(_command_output(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def _cpu_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except OSError:
        return None
    return None


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_jiffies() -> tuple[int, int, int]:
    """Return (busy, steal, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq, steal, total


def _section(results: dict[str, Any], name: str, work: Any) -> Any:
    """Run one part, store its result and how busy the machine was under ``name``.

    ``busy_cores`` is the mean number of busy CPUs over the part, from /proc/stat. This process
    alone keeps about 1 busy in the single-threaded parts, so a clearly higher value there means
    that another job ran at the same time.
    """
    logger.info("benchmark part %s", name)
    load_before = _load()
    busy_before, steal_before, total_before = _cpu_jiffies()
    started = time.perf_counter()
    value = work()
    results[name] = value
    busy_after, steal_after, total_after = _cpu_jiffies()
    elapsed = max(total_after - total_before, 1)
    cpus = os.cpu_count() or 1
    results.setdefault("load_average", {})[name] = {"before": load_before, "after": _load()}
    results.setdefault("busy_cores", {})[name] = round(cpus * (busy_after - busy_before) / elapsed, 2)
    results.setdefault("steal_fraction", {})[name] = round((steal_after - steal_before) / elapsed, 3)
    results.setdefault("part_seconds", {})[name] = time.perf_counter() - started
    return value


def run(quick: bool) -> dict[str, Any]:
    """Run every benchmark part and return the results."""
    settings = _settings(quick)
    torch.set_num_threads(1)
    method = throughput.paper_method()
    results: dict[str, Any] = {
        "meta": {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv]),
            "quick": quick,
            "settings": settings,
            "torch_threads": torch.get_num_threads(),
            "method": method.model_dump(by_alias=True),
            "machine": _machine(),
        }
    }

    _section(results, "sgemm_gflops", lambda: throughput.measure_sgemm(method, 100, settings["sgemm_repeats"]))
    _section(
        results,
        "bf16_gemm_gflops",
        lambda: throughput.measure_sgemm(method, 100, settings["sgemm_repeats"], dtype=torch.bfloat16),
    )
    flops = throughput.matmul_flops_per_batch(method, 100, 100)
    results["matmul_flops_per_batch"] = flops
    # The same steps with the encoders' products in bfloat16 (precision: bf16-mixed).
    mixed = method.model_copy(update={"precision": "bf16-mixed"})
    for suffix, settings_of_run in (("", method), ("_bf16", mixed)):
        for step in (1, 2):
            _section(
                results,
                f"step{step}{suffix}",
                lambda step=step, settings_of_run=settings_of_run: throughput.measure_step_throughput(
                    settings_of_run, step, settings["throughput_repeats"], settings["batches_per_block"]
                ),
            )
    _section(results, "components", lambda: throughput.measure_components(method, settings["component_repeats"]))
    _section(results, "peak_memory", peak_memory.measure_peak_memory)

    with tempfile.TemporaryDirectory(prefix="dssl-bench-") as folder:
        trials = settings["overhead_trials"]
        single = _section(
            results,
            "overhead_1_worker",
            lambda: overhead.run_overhead_study(Path(folder) / "one", 1, trials),
        )
        # Both studies run the same training and evaluation, so one in-process timing serves both.
        in_process = {int(seed): value for seed, value in single["in_process"].items()}
        _section(
            results,
            "overhead_2_workers",
            lambda: overhead.run_overhead_study(Path(folder) / "two", 2, trials, in_process=in_process),
        )

    results["targets"] = _targets(results)
    return results


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    measured = {
        "step1_samples_per_s": results["step1"]["samples_per_s"],
        "step2_samples_per_s": results["step2"]["samples_per_s"],
        "step1_bf16_samples_per_s": results["step1_bf16"]["samples_per_s"],
        "step2_bf16_samples_per_s": results["step2_bf16"]["samples_per_s"],
        "peak_rss_mib": results["peak_memory"]["peak_rss_mib"],
        "single_worker_overhead_s": results["overhead_1_worker"]["median_overhead_s"],
    }
    rows = []
    for name, target in TARGETS.items():
        at_least = name.endswith("samples_per_s")
        value = measured[name]
        rows.append(
            {
                "name": name,
                "target": target,
                "measured": value,
                "rule": ">=" if at_least else "<=",
                "met": value >= target if at_least else value <= target,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown report
# ---------------------------------------------------------------------------------------------


def _ceiling(results: dict[str, Any], step: int, gemm: str = "sgemm_gflops") -> float:
    """Return the samples/s of ``step`` if it ran only its matrix products, at the fastest ``gemm`` rate."""
    gflops = results[gemm]
    rate = max(value for key, value in gflops.items() if key != "1024^3") * 1e9
    seconds_per_batch = results["matmul_flops_per_batch"][f"step{step}"] / rate
    return results["meta"]["method"]["batch_size"] / seconds_per_batch


def markdown(results: dict[str, Any]) -> str:
    """Render the results as Markdown tables."""
    lines = ["| Measurement | Median | Spread | Target | Met |", "|---|---|---|---|---|"]
    met = {row["name"]: row for row in results["targets"]}
    for suffix, label, gemm in (("", "fp32", "sgemm_gflops"), ("_bf16", "bf16-mixed", "bf16_gemm_gflops")):
        for step in (1, 2):
            part = results[f"step{step}{suffix}"]
            target = met[f"step{step}{suffix}_samples_per_s"]
            lines.append(
                f"| Step-{step} training, {label}, samples/s (1 thread, {part['repeats']} blocks of "
                f"{part['batches_per_block']} batches) | {part['samples_per_s']:,.0f} | "
                f"{part['samples_per_s_min']:,.0f} to {part['samples_per_s_max']:,.0f} | "
                f">= {target['target']:,.0f} | {'yes' if target['met'] else 'no'} |"
            )
            lines.append(
                f"| Step-{step} time per batch, {label}, ms (CPU-time rate: "
                f"{part['samples_per_s_cpu']:,.0f} samples/s) | {part['ms_per_batch']:.2f} | | | |"
            )
            gflop = results["matmul_flops_per_batch"][f"step{step}"] / 1e9
            lines.append(
                f"| Step-{step} matmul-bound ceiling, {label}, samples/s ({gflop:.3f} GFLOP per batch at "
                f"the fastest model-shape {label} gemm rate) | {_ceiling(results, step, gemm):,.0f} | | | |"
            )
    memory = results["peak_memory"]
    target = met["peak_rss_mib"]
    lines.append(
        f"| Peak RSS, MiB (90,000 rows, 1 epoch per step) | {memory['peak_rss_mib']:,.0f} | "
        f"after imports {memory['after_imports_mib']:,.0f}, after dataset {memory['after_dataset_mib']:,.0f} | "
        f"<= {target['target']:,.0f} | {'yes' if target['met'] else 'no'} |"
    )
    for key, label in (("overhead_1_worker", "1 worker"), ("overhead_2_workers", "2 workers (TorchTrainer)")):
        part = results[key]
        target_text, met_text = "", ""
        if key == "overhead_1_worker":
            target_text = f"<= {met['single_worker_overhead_s']['target']:.0f}"
            met_text = "yes" if met["single_worker_overhead_s"]["met"] else "no"
        lines.append(
            f"| Platform overhead per trial, s, {label} (median of trials 2-{len(part['trials'])}) | "
            f"{part['median_overhead_s']:.2f} | {part['min_overhead_s']:.2f} to {part['max_overhead_s']:.2f} | "
            f"{target_text} | {met_text} |"
        )
        lines.append(
            f"| Study start-up, s, {label} (run_study call to first trial run) | {part['startup_s']:.1f} | | | |"
        )

    lines += ["", "| gemm shape (M x K x N) | float32 GFLOP/s | bfloat16 GFLOP/s |", "|---|---|---|"]
    lines += [
        f"| {shape} | {value:.1f} | {results['bf16_gemm_gflops'][shape]:.1f} |"
        for shape, value in results["sgemm_gflops"].items()
    ]

    lines += [
        "",
        "| Call | us per call | calls per batch | share of the step's batch time |",
        "|---|---|---|---|",
    ]
    for name, entry in results["components"].items():
        step_key = name.split(":")[0]
        share = ""
        if step_key in ("step1", "step2") and entry["calls_per_batch"]:
            batch_us = 1000.0 * results[step_key]["ms_per_batch"]
            share = f"{100.0 * entry['us'] * entry['calls_per_batch'] / batch_us:.0f}%"
        lines.append(f"| {name} | {entry['us']:,.0f} | {entry['calls_per_batch']:.0f} | {share} |")

    for key, label in (("overhead_1_worker", "1 worker"), ("overhead_2_workers", "2 workers")):
        part = results[key]
        lines += [
            "",
            f"| Trial ({label}) | seed | in-process s | MLflow run span s | gap before s | cycle s | overhead s |",
            "|---|---|---|---|---|---|---|",
        ]
        for index, row in enumerate(part["trials"], start=1):
            gap = "" if row["gap_s"] is None else f"{row['gap_s']:.2f}"
            cycle = "" if row["cycle_s"] is None else f"{row['cycle_s']:.2f}"
            lines.append(
                f"| {index} | {row['seed']} | {row['in_process_s']:.2f} | {row['span_s']:.2f} | {gap} | "
                f"{cycle} | {row['overhead_s']:.2f} |"
            )
        phases = part["median_phase_difference_s"]
        lines.append(
            "\nMedian trial-minus-in-process seconds per phase (trials 2-n): "
            + ", ".join(f"{phase} {value:.2f}" for phase, value in phases.items())
            + f"; gap between trials {part['median_gap_s']:.2f}."
        )
        lines.append(
            f"Start-up {part['startup_s']:.1f} s, teardown {part['teardown_s']:.1f} s, "
            f"ray.shutdown {part['ray_shutdown_s']:.1f} s, whole study {part['study_seconds']:.1f} s."
        )

    load = results["load_average"]
    lines.append("")
    lines.append(
        "Busy CPUs during each part (of "
        f"{results['meta']['machine']['cpus']}; this process alone keeps about 1 busy outside the studies): "
        + "; ".join(f"{name} {value}" for name, value in results["busy_cores"].items())
    )
    lines.append(
        "1-minute load average before/after each part: "
        + "; ".join(f"{name} {value['before'][0]}/{value['after'][0]}" for name, value in load.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and trials (about 4 minutes instead of 5)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results.json",
        help="where to write the JSON results (default: benchmarks/results.json)",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    results = run(arguments.quick)
    arguments.output.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    print(markdown(results))
    print(f"\nresults written to {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
