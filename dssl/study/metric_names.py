"""The metric names a trial reports, so that a study's metric can be checked before it runs.

Every name below is in a trial's final Tune report: the last value of each per-epoch metric
plus the final evaluation. Names follow ``dssl.train.loop``, ``dssl.methods.disentangled_ssl``,
``dssl.eval.evaluate`` and ``dssl.eval.retrieval``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec, StudySpec

_DATASET_LABELS = {"synthetic": ("y_c", "y_1", "y_2"), "digits": ("digit",)}
_DATASET_LATENTS = {"synthetic": ("z_s", "z_1", "z_2"), "digits": ()}


def _dataset_labels(spec: StudySpec) -> tuple[str, ...]:
    """Return the label names of the study's data: fixed per built-in kind, listed by a manifest."""
    if spec.data.kind == "parquet":
        from dssl.data.manifest import load_manifest

        return tuple(load_manifest(spec.data.manifest).labels)
    return _DATASET_LABELS.get(spec.data.kind, ())


def _dataset_latents(spec: StudySpec) -> tuple[str, ...]:
    """Return the true-latent names of the study's data (a manifest's ``latents``, if any)."""
    if spec.data.kind == "parquet":
        from dssl.data.manifest import load_manifest

        return tuple(load_manifest(spec.data.manifest).latents)
    return _DATASET_LATENTS.get(spec.data.kind, ())

_TIMING_METRICS = ("time/training_seconds", "time/trial_seconds", "epoch")


def per_epoch_metric_names(spec: StudySpec) -> set[str]:
    """Return the metrics reported after every epoch (the ones ASHA can compare).

    The phases' training terms and diagnostics depend on settings that the space may sample
    (:data:`_TERM_SETTINGS`), so only the names that every such variant reports are returned.
    """
    names = set.intersection(
        *(_phase_metric_names(method, _skipped_phases(spec, method)) for method in _term_variants(spec))
    )
    names.update(_mi_diagnostic_names(spec))
    return names


def _skipped_phases(spec: StudySpec, method: MethodSpec) -> tuple[str, ...]:
    """Return the phases that a trial may load instead of training, so that it reports none of their metrics."""
    from dssl.methods.registry import reuses_step1

    return ("step1",) if spec.tracking.reuse_step1 and reuses_step1(method) else ()


# Method paths whose value changes the phases' training terms or diagnostics: CLUB adds its
# learning loss and a learnable temperature adds the temperature.
_TERM_SETTINGS = ("name", "step2.enabled", "step2.penalty", "temperature_learnable")


def _phase_metric_names(method: MethodSpec, skipped: tuple[str, ...] = ()) -> set[str]:
    """Return the per-epoch names that the phases of ``method``, except ``skipped``, report (``dssl.train.loop``)."""
    from dssl.methods.registry import describe_phases

    names: set[str] = set()
    for phase in describe_phases(method):
        if phase.name in skipped:
            continue
        names.update(f"{phase.name}/train/{term}" for term in phase.train_terms)
        names.update(phase.metric_key(diagnostic) for diagnostic in phase.diagnostics)
        names.update((f"{phase.name}/lr", f"{phase.name}/samples_per_second"))
    return names


def _term_variants(spec: StudySpec) -> list[MethodSpec]:
    """Return the study's method with every combination of the sampled :data:`_TERM_SETTINGS` values.

    Conditional entries and other settings are ignored, so the list may contain variants that no
    trial trains. The intersection over it is then stricter than needed, never looser.
    """
    from dssl.study.schema import CategoricalParameter, GridParameter

    if spec.search.grids:
        # A grid union sets each block's own values, so each point is one variant.
        from dssl.study.space import grid_union_points

        variants = []
        for point in grid_union_points(spec.search):
            method = spec.method
            for path in _TERM_SETTINGS:
                if path in point:
                    method = _with_value(method, path, point[path])
            variants.append(method)
        return variants

    variants = [spec.method]
    for path in _TERM_SETTINGS:
        parameter = spec.search.space.get(path)
        if isinstance(parameter, CategoricalParameter):
            values = parameter.choices
        elif isinstance(parameter, GridParameter):
            values = parameter.values
        else:
            continue
        variants = [_with_value(method, path, value) for method in variants for value in values]
    return variants


def _with_value(method: MethodSpec, path: str, value: object) -> MethodSpec:
    """Return ``method`` with one (possibly nested) field replaced, without re-validation."""
    section, _, name = path.rpartition(".")
    if not section:
        return method.model_copy(update={name: value})
    nested = getattr(method, section)
    return method.model_copy(update={section: nested.model_copy(update={name: value})})


def _mi_diagnostic_names(spec: StudySpec) -> set[str]:
    """Return the names of the per-epoch MI and R² diagnostics (``dssl.eval.mi_diagnostics``).

    A phase reports the estimator pairs and regressed representations that the phases trained so
    far produce together, so DisentangledSSL's step 1 reports only ``r2/shared/*``. A name counts
    when some phase of every sampled method variant reports it. None do when
    ``eval.mi_every_n_epochs`` is null.
    """
    if spec.eval.mi_every_n_epochs is None:
        return set()
    latents = _dataset_latents(spec)
    return set.intersection(*(_mi_diagnostic_names_of(method, latents) for method in _term_variants(spec)))


def _mi_diagnostic_names_of(method: MethodSpec, latents: tuple[str, ...]) -> set[str]:
    """Return the per-epoch MI and R² names that some phase of ``method`` reports."""
    from dssl.eval.mi_diagnostics import estimated_pairs, pair_metric_names, regressed_representations
    from dssl.methods.registry import describe_phases

    names: set[str] = set()
    available: set[str] = set()
    for phase in describe_phases(method):
        available.update(phase.representations)
        for modality in estimated_pairs(available):
            names.update(pair_metric_names(modality))
        names.update(f"r2/{r}/{latent}" for r in regressed_representations(available) for latent in latents)
    return names


def _probed_representations(method: MethodSpec) -> tuple[list[str], list[str]]:
    """Return the probed representations and the ones regressed on the true latents."""
    from dssl.methods.registry import describe_phases

    available = {name for phase in describe_phases(method) for name in phase.representations}
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
    """Return every metric in a trial's final report (the ones a searcher can optimise).

    When the space samples the method or whether step 2 runs, only the probe, R² and retrieval
    names that every variant reports count. Retrieval names (``dssl.eval.retrieval``) need the
    per-modality shared embeddings, which are present exactly when ``shared`` is probed.
    """
    from dssl.eval.retrieval import retrieval_metric_names

    labels = _dataset_labels(spec)
    latents = _dataset_latents(spec)
    evaluated: set[str] | None = None
    for method in _term_variants(spec):
        probed, regressed = _probed_representations(method)
        variant = {f"probe/{r}/{label}" for r in probed for label in labels}
        variant.update(f"r2/{r}/{latent}" for r in regressed for latent in latents)
        if "shared" in probed:
            variant.update(retrieval_metric_names())
        evaluated = variant if evaluated is None else evaluated & variant

    return per_epoch_metric_names(spec) | set(_TIMING_METRICS) | (evaluated or set())
