"""The metric names a trial reports, so that a study's metric can be checked before it runs.

Every name below is in a trial's final Tune report: the last value of each per-epoch metric
plus the final evaluation. Names follow ``dssl.train.loop``, ``dssl.methods.disentangled_ssl``
and ``dssl.eval.evaluate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dssl.study.schema import StudySpec

_DATASET_LABELS = {"synthetic": ("y_c", "y_1", "y_2"), "digits": ("digit",)}
_DATASET_LATENTS = {"synthetic": ("z_s", "z_1", "z_2"), "digits": ()}

_TIMING_METRICS = ("time/training_seconds", "time/trial_seconds", "epoch")


def per_epoch_metric_names(spec: StudySpec) -> set[str]:
    """Return the metrics reported after every epoch (the ones ASHA can compare)."""
    from dssl.methods.registry import describe_phases

    names: set[str] = set()
    for phase in describe_phases(spec.method):
        names.update(f"{phase.name}/train/{term}" for term in phase.train_terms)
        names.update(phase.metric_key(diagnostic) for diagnostic in phase.diagnostics)
        names.update((f"{phase.name}/lr", f"{phase.name}/samples_per_second"))
    return names


def _probed_representations(spec: StudySpec) -> tuple[list[str], list[str]]:
    """Return the probed representations and the ones regressed on the true latents."""
    from dssl.methods.registry import describe_phases

    available = {name for phase in describe_phases(spec.method) for name in phase.representations}
    probed, regressed = [], []
    if {"shared1", "shared2"} <= available:
        probed.append("shared")
        regressed.append("shared")
    if {"specific1", "specific2"} <= available:
        probed += ["specific1", "specific2", "specific"]
        regressed += ["specific1", "specific2"]
        if "shared" in probed:
            probed.append("both")
    return probed, regressed


def final_metric_names(spec: StudySpec) -> set[str]:
    """Return every metric in a trial's final report (the ones a searcher can optimise)."""
    probed, regressed = _probed_representations(spec)
    labels = _DATASET_LABELS.get(spec.data.kind, ())
    latents = _DATASET_LATENTS.get(spec.data.kind, ())

    names = per_epoch_metric_names(spec) | set(_TIMING_METRICS)
    names.update(f"probe/{r}/{label}" for r in probed for label in labels)
    names.update(f"r2/{r}/{latent}" for r in regressed for latent in latents)
    return names
