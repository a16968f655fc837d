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

_STEP1_EPOCH_METRICS = (
    "step1/train/loss",
    "step1/train/infonce",
    "step1/train/cmi_penalty",
    "step1/val/infonce",
    "step1/lr",
    "step1/samples_per_second",
    "mi/shared_infonce_lower_bound",
    "mi/cmi_upper_bound_kl",
)
_STEP2_EPOCH_METRICS = (
    "step2/train/loss",
    "step2/train/infonce1",
    "step2/train/infonce2",
    "step2/train/overlap",
    "step2/val/infonce1",
    "step2/val/infonce2",
    "step2/val/overlap",
    "step2/lr",
    "step2/samples_per_second",
    "mi/specific1_infonce_lower_bound",
    "mi/specific2_infonce_lower_bound",
)
_TIMING_METRICS = ("time/training_seconds", "time/trial_seconds", "epoch")


def per_epoch_metric_names(spec: StudySpec) -> set[str]:
    """Return the metrics reported after every epoch (the ones ASHA can compare)."""
    names = set(_STEP1_EPOCH_METRICS)
    if spec.method.step2.enabled:
        names.update(_STEP2_EPOCH_METRICS)
    return names


def final_metric_names(spec: StudySpec) -> set[str]:
    """Return every metric in a trial's final report (the ones a searcher can optimise)."""
    representations = ["shared"]
    if spec.method.step2.enabled:
        representations += ["specific1", "specific2", "specific", "both"]
    labels = _DATASET_LABELS.get(spec.data.kind, ())
    latents = _DATASET_LATENTS.get(spec.data.kind, ())

    names = per_epoch_metric_names(spec) | set(_TIMING_METRICS)
    names.update(f"probe/{r}/{label}" for r in representations for label in labels)
    names.update(f"r2/{r}/{latent}" for r in representations[:3] for latent in latents)
    return names
