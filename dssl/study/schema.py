"""Study file schema: the YAML format that describes one hyperparameter study.

A study file names the data, the DisentangledSSL method settings, the search (algorithm, metric,
space, seeds), the resources of each trial, the evaluation options and the tracking experiment.
:func:`load_study` reads and validates such a file and raises :class:`StudyValidationError` with
one line per problem, each naming the field path, what is allowed and the value that was given.

Search space keys are dotted paths into ``method``, written with the YAML names (``step1.beta``,
``step2.lambda``, ``embed_dim``). :func:`resolve_method` applies the values that a trial samples
for those paths to the base method settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import re
import typing
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    ValidatorFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

logger = logging.getLogger(__name__)

__all__ = [
    "AshaSpec",
    "CategoricalParameter",
    "DATA_KINDS",
    "DataSpec",
    "DigitsDataSpec",
    "EvalSpec",
    "GridParameter",
    "IntParameter",
    "LogUniformParameter",
    "MethodSpec",
    "NO_VALUE",
    "ParameterSpec",
    "ParquetDataSpec",
    "ResourceSpec",
    "SearchSpec",
    "Step1Spec",
    "Step2Spec",
    "StudyProblem",
    "StudySpec",
    "StudyValidationError",
    "SyntheticDataSpec",
    "TrackingSpec",
    "UniformParameter",
    "canonical_method_path",
    "dump_resolved_yaml",
    "flatten_params",
    "load_study",
    "method_parameter_paths",
    "method_value",
    "resolve_method",
    "validate_study",
]

STUDY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
METRIC_NAME_PATTERN = re.compile(r"^[/\w.\- ]+$")
PARAMETER_TYPES: tuple[str, ...] = ("loguniform", "uniform", "int", "categorical", "grid")
DATA_KINDS: tuple[str, ...] = ("synthetic", "digits", "parquet")

# Discriminated unions, keyed by the discriminator text in pydantic's error context: the tag
# field and its allowed values.
_UNION_TAG_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "'type'": ("type", PARAMETER_TYPES),
    "_data_kind()": ("kind", DATA_KINDS),
}

_SYNTHETIC_ONLY_FIELDS: tuple[str, ...] = (
    "n_samples",
    "latent_dim",
    "x_dim",
    "latent_variance",
    "regime",
    "relative_noise_std",
)
# Equals dssl.data.synthetic.DEFAULT_RELATIVE_NOISE_STD. This module does not import the data
# package, so tests/test_synthetic_regimes.py checks that the two values (and the regimes) agree.
_UNATTAINABLE_DEFAULT_NOISE = 0.5
_MAX_VALUE_REPR = 160
_PROBLEM_ERROR_TYPE = "study_problem"


# --------------------------------------------------------------------------------------------
# Problems and the validation error
# --------------------------------------------------------------------------------------------


class _NoValue:
    """Marker for a problem that has no offending value, such as a missing field."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


@dataclasses.dataclass(frozen=True)
class StudyProblem:
    """One problem found in a study file.

    Attributes:
        field: Dotted path of the field, e.g. ``search.space.step1.beta.low``; empty for problems
            of the file itself (missing file, YAML syntax error).
        message: What is wrong and what is allowed.
        value: The offending value, or :data:`NO_VALUE` when there is none.
    """

    field: str
    message: str
    value: Any = NO_VALUE

    def render(self) -> str:
        """Render the problem as ``field: message (got value)``."""
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.value is not NO_VALUE:
            text += f" (got {_short_repr(self.value)})"
        return text


class StudyValidationError(Exception):
    """Raised when a study file cannot be read or does not follow the schema.

    Attributes:
        path: The study file, or a label such as ``<memory>`` for in-memory data.
        problems: Every problem found, in the order pydantic reported them.
    """

    def __init__(self, path: str | os.PathLike[str], problems: list[StudyProblem]) -> None:
        self.path = os.fspath(path)
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {problem.render()}" for problem in self.problems)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling passes only args to __init__; Ray pickles errors raised in workers.
        return (type(self), (self.path, self.problems))


@dataclasses.dataclass(frozen=True)
class _Issue:
    """A problem found by a validator, located relative to the model that raised it."""

    loc: tuple[str | int, ...]
    message: str
    value: Any = NO_VALUE


def _short_repr(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_REPR:
        text = text[: _MAX_VALUE_REPR - 3] + "..."
    return text


def _raise_issues(issues: list[_Issue]) -> typing.NoReturn:
    """Raise the issues as one pydantic error that :func:`_problems_from_error` expands again."""
    summary = "; ".join(f"{'.'.join(map(str, issue.loc))}: {issue.message}" for issue in issues)
    raise PydanticCustomError(
        _PROBLEM_ERROR_TYPE, "{summary}", {"summary": summary, "issues": tuple(issues)}
    )


def _did_you_mean(word: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}? " if matches else ""


# --------------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------------


_BOUND_SYMBOLS: dict[str, tuple[str, str]] = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _reword(error: Mapping[str, Any]) -> str:
    """Turn a pydantic error message into a ``must ...`` statement of what is allowed."""
    message = str(error["msg"])
    error_type = error["type"]
    if error_type == "missing":
        return "required field is missing"
    if error_type == "extra_forbidden":
        return "unknown field"
    if error_type in _BOUND_SYMBOLS:
        symbol, key = _BOUND_SYMBOLS[error_type]
        return f"must be {symbol} {(error.get('ctx') or {}).get(key)!r}"
    if error_type in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping"
    if message.startswith("Value error, "):
        return message[len("Value error, ") :]
    if message.startswith("Input should be "):
        return "must be " + message[len("Input should be ") :]
    if message.startswith("Input "):
        return message[len("Input ") :]
    return message[:1].lower() + message[1:]


def _render_loc(loc: tuple[str | int, ...]) -> str:
    """Join a location into a dotted path, with ``[i]`` for list items.

    Pydantic puts the tag of a discriminated union into the location
    (``search.space.step1.beta.loguniform.low``, ``data.synthetic.n_samples``); the tag is dropped.
    """
    parts: list[str] = []
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        if index >= 2 and loc[index - 2] == "space" and item in PARAMETER_TYPES:
            continue
        if index >= 1 and loc[index - 1] == "data" and item in DATA_KINDS:
            continue
        parts.append(("." if parts else "") + item)
    return "".join(parts)


def _union_tag_issue(loc: tuple[str | int, ...], error: Mapping[str, Any]) -> _Issue:
    """Locate a discriminated-union error at the tag field (``type`` or ``kind``)."""
    context = error.get("ctx") or {}
    field, tags = _UNION_TAG_FIELDS.get(str(context.get("discriminator")), ("type", PARAMETER_TYPES))
    allowed = ", ".join(repr(tag) for tag in tags)
    data = error.get("input")

    if not isinstance(data, Mapping):
        return _Issue(loc, f"must be a mapping with {field} one of {allowed}", data)
    if field not in data:
        return _Issue(loc + (field,), f"required field is missing; must be one of {allowed}")
    return _Issue(loc + (field,), f"must be one of {allowed}", data[field])


def _issues_from_error(exc: ValidationError) -> list[_Issue]:
    """Convert a pydantic error into issues that name the field path, the rule and the value.

    Issues raised by this module's validators travel inside one pydantic error each and are
    unpacked again here.
    """
    issues = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        context = error.get("ctx") or {}

        if error["type"] == _PROBLEM_ERROR_TYPE:
            for issue in context["issues"]:
                issues.append(_Issue(loc + issue.loc, issue.message, issue.value))
            continue

        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            issues.append(_union_tag_issue(loc, error))
            continue

        has_value = error["type"] != "missing"
        value = error.get("input", NO_VALUE) if has_value else NO_VALUE
        issues.append(_Issue(loc, _reword(error), value))
    return issues


def _problems_from_error(
    exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[StudyProblem]:
    """Convert a pydantic error into rendered problems, locations prefixed with ``prefix``."""
    return [
        StudyProblem(_render_loc(prefix + issue.loc), issue.message, issue.value)
        for issue in _issues_from_error(exc)
    ]


# --------------------------------------------------------------------------------------------
# Base model
# --------------------------------------------------------------------------------------------


class _Spec(BaseModel):
    """Base of every study model: frozen, unknown fields rejected, fields settable by name or alias."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        allow_inf_nan=False,
    )

    # Extra text for the unknown-field message of specific keys.
    _field_hints: ClassVar[dict[str, str]] = {}

    @model_validator(mode="wrap")
    @classmethod
    def _reject_unknown_fields(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # pydantic's own extra_forbidden error does not list the allowed fields. The known fields
        # are still validated, so one misspelt key does not hide the other problems.
        if not isinstance(data, Mapping):
            return handler(data)

        allowed = _yaml_field_names(cls)
        accepted = set(allowed) | set(cls.model_fields)
        issues = []
        for key in data:
            if key in accepted:
                continue
            if str(key) in cls._field_hints:
                message = f"unknown field; {cls._field_hints[str(key)]}; "
            else:
                message = f"unknown field; {_did_you_mean(str(key), allowed)}"
            message += f"allowed fields: {', '.join(allowed)}"
            issues.append(_Issue((str(key),), message, data[key]))
        if not issues:
            return handler(data)

        try:
            handler({key: value for key, value in data.items() if key in accepted})
        except ValidationError as exc:
            issues.extend(_issues_from_error(exc))
        _raise_issues(issues)


def _yaml_field_names(model: type[BaseModel]) -> list[str]:
    """Return the field names as written in YAML (aliases where set), sorted."""
    return sorted(info.alias or name for name, info in model.model_fields.items())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class SyntheticDataSpec(_Spec):
    """The synthetic benchmark: latent blocks Zs, Z1, Z2 mixed linearly into X1 and X2."""

    kind: Literal["synthetic"] = "synthetic"
    seed: int = Field(0, ge=0, description="Data generation and split seed.")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of rows held out.")
    n_samples: int = Field(90000, ge=1000, description="Rows before the train/test split.")
    latent_dim: int = Field(50, ge=1, description="Dim of each latent block.")
    x_dim: int = Field(100, ge=1, description="Dim of each modality.")
    latent_variance: float = Field(0.5, gt=0.0, description="Variance of each latent coordinate.")
    regime: Literal["reference", "attainable", "unattainable"] = Field(
        "reference",
        description=(
            "How X1 and X2 are made from the latents: 'reference' (uniform mixing), 'attainable' "
            "(orthonormal mixing, Zs is a linear function of each modality) or 'unattainable' "
            "(uniform mixing plus observation noise and/or x_dim < 2 * latent_dim)."
        ),
    )
    relative_noise_std: Annotated[float, Field(ge=0.0)] | None = Field(
        None,
        description=(
            "Observation-noise std of the 'unattainable' regime, relative to the RMS std of the "
            "noise-free coordinates; 0.5 when omitted. Only allowed with regime: unattainable."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_noise(cls, data: Any) -> Any:
        # Filled in here, not left to the builder, so the resolved study file records the level.
        if not isinstance(data, Mapping) or data.get("regime") != "unattainable":
            return data
        if data.get("relative_noise_std") is None:
            return {**data, "relative_noise_std": _UNATTAINABLE_DEFAULT_NOISE}
        return data

    @model_validator(mode="after")
    def _check_regime(self) -> SyntheticDataSpec:
        invertible = self.x_dim >= 2 * self.latent_dim
        issues = []
        if self.regime == "attainable" and not invertible:
            issues.append(
                _Issue(
                    ("x_dim",),
                    f"must be >= 2 * latent_dim = {2 * self.latent_dim} with regime: attainable, because "
                    "a mixing into fewer dimensions cannot be inverted; use regime 'reference' or "
                    "'unattainable' for smaller x_dim",
                    self.x_dim,
                )
            )
        if self.regime != "unattainable" and self.relative_noise_std is not None:
            issues.append(
                _Issue(
                    ("relative_noise_std",),
                    f"only allowed with regime: unattainable, not with regime: {self.regime}",
                    self.relative_noise_std,
                )
            )
        if self.regime == "unattainable" and self.relative_noise_std == 0 and invertible:
            issues.append(
                _Issue(
                    ("relative_noise_std",),
                    f"must be > 0 with regime: unattainable unless x_dim < 2 * latent_dim = "
                    f"{2 * self.latent_dim} (x_dim is {self.x_dim}), because noise-free mixing into "
                    "that many dimensions is invertible and makes the MNI point attainable",
                    self.relative_noise_std,
                )
            )
        if issues:
            _raise_issues(issues)
        return self


class DigitsDataSpec(_Spec):
    """The scikit-learn 8x8 digits split into two views; its one label is ``digit``."""

    _field_hints: ClassVar[dict[str, str]] = {
        key: "only allowed with data.kind: synthetic" for key in _SYNTHETIC_ONLY_FIELDS
    }

    kind: Literal["digits"]
    seed: int = Field(0, ge=0, description="Split seed.")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of rows held out.")


class ParquetDataSpec(_Spec):
    """A dataset in dssl's Parquet format, named by its manifest (see docs/data.md).

    The manifest is read when the study is validated, so a missing or malformed manifest stops
    the study before Ray or MLflow start. The data files themselves are checked by the runner,
    also before any trial starts.
    """

    _field_hints: ClassVar[dict[str, str]] = {
        key: "only allowed with data.kind: synthetic" for key in _SYNTHETIC_ONLY_FIELDS
    }

    kind: Literal["parquet"]
    manifest: str = Field(
        description=(
            "The dataset manifest (dataset.yaml), absolute or relative to the folder that the "
            "study starts in; stored as an absolute path."
        ),
    )
    seed: int = Field(0, ge=0, description="Seed of the random split when the manifest names no split column.")
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of rows held out when the manifest names no split column."
    )
    streaming: bool = Field(
        False,
        description=(
            "Stream the training rows through Ray Data instead of reading the dataset into memory, "
            "for datasets larger than memory. Needs a split column and eval.probe_max_train_samples."
        ),
    )

    @field_validator("manifest", mode="after")
    @classmethod
    def _check_manifest(cls, value: str) -> str:
        from dssl.data.manifest import load_manifest
        from dssl.data.parquet import DatasetValidationError

        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise ValueError(
                f"no manifest at {str(path)!r}; write one with 'dssl data synthetic|digits|convert "
                "--out DIR' (it writes DIR/dataset.yaml) or correct the path"
            )
        try:
            load_manifest(path)
        except DatasetValidationError as error:
            raise ValueError(f"the manifest {str(path)!r} is invalid: {error}") from None
        return str(path)


def _data_kind(value: Any) -> str | None:
    """Pick the data variant; a mapping without ``kind`` is synthetic."""
    if isinstance(value, Mapping):
        return value.get("kind", "synthetic")
    return getattr(value, "kind", None)


# Each variant dumps exactly the keyword arguments of its dataset builder (kind excluded).
DataSpec = Annotated[
    Union[
        Annotated[SyntheticDataSpec, Tag("synthetic")],
        Annotated[DigitsDataSpec, Tag("digits")],
        Annotated[ParquetDataSpec, Tag("parquet")],
    ],
    Discriminator(_data_kind),
]
# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


class Step1Spec(_Spec):
    """Step 1: shared encoders trained with cross-modal InfoNCE plus ``beta`` times a penalty.

    ``penalty`` selects the scale of ``beta``. ``cosine`` penalises ``-mean cos(mu1, mu2)``, the
    scale of the reference code. ``kl`` penalises the symmetrised KL divergence between the two
    posteriors. For vMF heads that KL is ``kappa * A_d(kappa)`` times the cosine form. The Gaussian
    head has no cosine form, so it requires ``kl``. The ``deterministic`` head uses z = mu (no
    sampling, the CLIP baseline's variant) and has no KL form, so it requires ``cosine``.
    """

    beta: float = Field(0.1, ge=0.0, description="Weight of the conditional-MI penalty.")
    penalty: Literal["cosine", "kl"] = "cosine"
    head: Literal["vmf", "gaussian", "deterministic"] = "vmf"
    kappa: float = Field(1000.0, gt=0.0, description="vMF concentration, fixed.")
    epochs: int = Field(50, ge=1)
    lr: float = Field(1.0e-4, gt=0.0, description="Adam learning rate, cosine-annealed to 0.")
    augment: bool = Field(True, description="Train on one augmented view of each input, as the reference does.")
    noise_std: float = Field(0.01, ge=0.0, description="Std of the additive-noise augmentation.")
    drop_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of coordinates zeroed by the drop augmentation.")

    @model_validator(mode="after")
    def _check_head_penalty(self) -> Step1Spec:
        if self.head == "gaussian" and self.penalty != "kl":
            _raise_issues(
                [_Issue(("penalty",), "must be 'kl' when head is 'gaussian'", self.penalty)]
            )
        if self.head == "deterministic" and self.penalty != "cosine":
            _raise_issues(
                [_Issue(("penalty",), "must be 'cosine' when head is 'deterministic'", self.penalty)]
            )
        return self


class Step2Spec(_Spec):
    """Step 2: modality-specific encoders, shared encoders frozen, ``lambda`` weighs the overlap penalty.

    ``penalty`` selects the estimator of the overlap between each specific code s_m and the
    frozen shared code c_m of the same modality. ``orthogonality`` is the reference's Frobenius
    norm of the cross-correlation. ``club`` is the CLUB upper bound on I(s_m; c_m), with a
    variational network per modality trained alongside the encoders. ``hsic`` is the
    Gaussian-kernel HSIC. ``club_hidden_dim`` belongs to ``club`` and ``hsic_sigma`` to ``hsic``,
    and a setting given with another penalty is rejected.
    """

    # The settings that only one penalty uses, each mapped to that penalty.
    penalty_settings: ClassVar[dict[str, str]] = {"club_hidden_dim": "club", "hsic_sigma": "hsic"}
    default_club_hidden_dim: ClassVar[int] = 64

    enabled: bool = Field(True, description="False trains step 1 only.")
    lam: float = Field(1.0, alias="lambda", ge=0.0, description="Weight of the overlap penalty.")
    penalty: Literal["orthogonality", "club", "hsic"] = Field(
        "orthogonality", description="Overlap penalty between each specific code and its modality's shared code."
    )
    club_hidden_dim: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Hidden width of CLUB's variational network, 64 when omitted. Only allowed with penalty: club.",
    )
    hsic_sigma: Annotated[float, Field(gt=0.0)] | None = Field(
        None,
        description=(
            "Gaussian kernel bandwidth of HSIC on row-normalised codes; null uses the median "
            "heuristic. Only allowed with penalty: hsic."
        ),
    )
    epochs: int = Field(30, ge=1)
    lr: float = Field(1.0e-4, gt=0.0, description="Adam learning rate, cosine-annealed to 0.")
    noise_std: float = Field(0.01, ge=0.0, description="Std of the additive-noise augmentation.")
    drop_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of coordinates zeroed by the drop augmentation."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_club_hidden_dim(cls, data: Any) -> Any:
        # Filled in here, not left to the model, so the resolved study file and the trial's
        # parameters record the width.
        if not isinstance(data, Mapping) or data.get("penalty") != "club":
            return data
        if data.get("club_hidden_dim") is None:
            return {**data, "club_hidden_dim": cls.default_club_hidden_dim}
        return data

    @model_validator(mode="after")
    def _check_penalty_settings(self) -> Step2Spec:
        issues = []
        for name, owner in self.penalty_settings.items():
            value = getattr(self, name)
            if value is not None and self.penalty != owner:
                message = f"only allowed with penalty: {owner}, not with penalty: {self.penalty}"
                issues.append(_Issue((name,), message, value))
        if issues:
            _raise_issues(issues)
        return self


class DmvaeSpec(_Spec):
    """DMVAE baseline (``method.name: dmvae``): ``a`` weighs the KL terms against the reconstructions.

    loss = recon + a * F * kl + cross_weight * (recon_cross + a * F * kl_cross). The
    reconstructions are mean squared errors per coordinate, and kl and kl_cross are KL divergences
    to N(0, I) per row. F is ``batch_size`` with ``kl_reduction: batch_sum``, because the reference
    sums its KL terms over the batch, so its grid of ``a`` (0 and 1e-7 to 1e-2) applies unchanged.
    F is 1 with ``row_mean``. See dssl.methods.dmvae and docs/method.md.
    """

    a: float = Field(1.0e-5, ge=0.0, description="Weight of the KL terms. The reference sweeps 0 and 1e-7 to 1e-2.")
    kl_reduction: Literal["batch_sum", "row_mean"] = Field(
        "batch_sum",
        description="KL scale: the sum over the global batch (the reference's) or the mean per row.",
    )
    cross_weight: float = Field(
        1.0, ge=0.0, description="Weight of the cross-reconstruction and its KL terms (1 in the reference)."
    )
    prior_expert: bool = Field(
        False, description="Add the N(0, I) prior as a third expert to the shared product of experts."
    )
    num_hidden_layers: int = Field(
        2,
        ge=1,
        description=(
            "Hidden layers of every DMVAE encoder and decoder (2 in the reference); the "
            "top-level num_hidden_layers is not used by DMVAE."
        ),
    )
    epochs: int = Field(50, ge=1)
    lr: float = Field(1.0e-4, gt=0.0, description="Adam learning rate, cosine-annealed to 0.")
    augment: bool = Field(True, description="Train on one augmented view of each input, as the reference does.")
    noise_std: float = Field(0.01, ge=0.0, description="Std of the additive-noise augmentation.")
    drop_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of coordinates zeroed by the drop augmentation."
    )


class JointOptSpec(_Spec):
    """JointOpt baseline (``method.name: joint_opt``): shared and specific encoders trained together.

    loss = 2 * shared / (1 + a) + a * (specific1 + specific2) / (1 + a) + lambda * ortho, with no
    beta term. The defaults are those of the reference script jointdisen_mp.py, which sweeps
    ``a`` over 0.01 to 1000 and ``lambda`` over 0 and 1e-3 to 100. See dssl.methods.joint_opt.
    """

    a: float = Field(1.0, ge=0.0, description="Weight of the specific InfoNCE terms against the shared one.")
    lam: float = Field(0.0, alias="lambda", ge=0.0, description="Weight of the orthogonality penalty.")
    head: Literal["vmf", "deterministic"] = Field(
        "vmf", description="Shared head: vMF samples (the reference) or z = e / ||e|| without sampling."
    )
    kappa: float = Field(1000.0, gt=0.0, description="vMF concentration of the shared head, fixed.")
    num_hidden_layers: int = Field(
        2, ge=1, description="Hidden layers of every JointOpt encoder; the top-level num_hidden_layers is not used."
    )
    epochs: int = Field(50, ge=1)
    lr: float = Field(1.0e-4, gt=0.0, description="Adam learning rate, cosine-annealed to 0.")
    noise_std: float = Field(0.01, ge=0.0, description="Std of the additive-noise augmentation.")
    drop_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of coordinates zeroed by the drop augmentation."
    )


class FocalSpec(_Spec):
    """FOCAL baseline (``method.name: focal``): deterministic shared and specific encoders.

    loss = 2 * shared + a * (specific1 + specific2) + lambda * ortho, where shared is the CLIP loss
    averaged over both augmented views and ortho sums six mean cosines (specific against own
    shared, and specific 1 against specific 2, on both views). The defaults are the command-line
    defaults ``--a 1`` and ``--lmd 0`` of the reference script focal_mp.py, which sweeps ``a`` over
    0.01 to 1000 and ``lambda`` over 0 and 1e-3 to 100. See dssl.methods.focal.
    """

    a: float = Field(1.0, ge=0.0, description="Weight of the specific InfoNCE terms.")
    lam: float = Field(0.0, alias="lambda", ge=0.0, description="Weight of the cosine penalty.")
    num_hidden_layers: int = Field(
        2, ge=1, description="Hidden layers of every FOCAL encoder; the top-level num_hidden_layers is not used."
    )
    epochs: int = Field(50, ge=1)
    lr: float = Field(1.0e-4, gt=0.0, description="Adam learning rate, cosine-annealed to 0.")
    noise_std: float = Field(0.01, ge=0.0, description="Std of the additive-noise augmentation.")
    drop_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of coordinates zeroed by the drop augmentation."
    )


class MethodSpec(_Spec):
    """DisentangledSSL settings; the search space samples some of them per trial."""

    name: Literal["disentangled_ssl", "clip", "joint_opt", "focal", "dmvae"] = Field(
        "disentangled_ssl",
        description=(
            "The method: 'disentangled_ssl' (two steps), 'clip' (step 1 with beta 0, step 2 off), "
            "or the joint baselines 'joint_opt', 'focal' and 'dmvae'."
        ),
    )
    hidden_dim: int = Field(512, ge=1, description="Width of each MLP hidden layer.")
    num_hidden_layers: int = Field(1, ge=1)
    embed_dim: int = Field(100, ge=1, description="Shared and specific embedding dim per modality.")
    # InfoNCE needs at least one negative per row, so a batch needs at least 2 rows.
    batch_size: int = Field(256, ge=2)
    temperature: float = Field(0.07, gt=0.0, description="InfoNCE temperature.")
    temperature_learnable: bool = Field(
        False,
        description=(
            "Learn the InfoNCE temperature: each phase owns a log-temperature parameter that starts "
            "at temperature and is clamped to temperature_range."
        ),
    )
    temperature_range: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = Field(
        (0.01, 1.0), description="[low, high] of a learnable temperature. Unused when the temperature is fixed."
    )
    init_std: float = Field(0.01, gt=0.0, description="Std of the N(0, std^2) weight init.")
    precision: Literal["fp32", "bf16-mixed"] = Field(
        "fp32",
        description=(
            "Arithmetic of the encoders' matrix products in training. 'bf16-mixed' runs them in "
            "bfloat16 under torch.autocast while weights, heads, losses and evaluation stay float32; "
            "it is faster on GPUs and on CPUs with AVX512-BF16 or AMX, and slower on other CPUs."
        ),
    )

    @model_validator(mode="after")
    def _check_temperature_range(self) -> MethodSpec:
        low, high = self.temperature_range
        issues = []
        if not low < high:
            message = f"must be [low, high] with low < high, got low {low!r} and high {high!r}"
            issues.append(_Issue(("temperature_range",), message, list(self.temperature_range)))
        elif self.temperature_learnable and not low <= self.temperature <= high:
            message = (
                f"must lie in temperature_range [{low!r}, {high!r}] when temperature_learnable is true, "
                "because the learnable temperature starts there"
            )
            issues.append(_Issue(("temperature",), message, self.temperature))
        if issues:
            _raise_issues(issues)
        return self

    step1: Step1Spec = Step1Spec()
    step2: Step2Spec = Step2Spec()
    joint_opt: JointOptSpec = JointOptSpec()
    focal: FocalSpec = FocalSpec()
    dmvae: DmvaeSpec = DmvaeSpec()


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A scalar field of :class:`MethodSpec` that the search space may sample."""

    path: str
    attrs: tuple[str, ...]
    info: FieldInfo


@functools.cache
def _method_leaves() -> dict[str, _Leaf]:
    """Map every scalar method field's dotted YAML path to its field."""
    leaves: dict[str, _Leaf] = {}

    def visit(model: type[BaseModel], prefix: tuple[str, ...], attrs: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            # The method name is a leaf too, so a study can compare methods on one budget.
            key = info.alias or name
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                visit(annotation, prefix + (key,), attrs + (name,))
                continue
            if typing.get_origin(annotation) in (tuple, list):
                continue  # A sequence such as temperature_range is set under method, not sampled.
            path = ".".join(prefix + (key,))
            leaves[path] = _Leaf(path, attrs + (name,), info)

    visit(MethodSpec, (), ())
    return leaves


@functools.cache
def _method_path_synonyms() -> dict[str, str]:
    """Map both the YAML path (``step2.lambda``) and the Python path (``step2.lam``) to the YAML path."""
    synonyms = {}
    for path, leaf in _method_leaves().items():
        synonyms[path] = path
        synonyms[".".join(leaf.attrs)] = path
    return synonyms


def method_parameter_paths() -> list[str]:
    """Return the dotted paths of the method fields that a search space may set, sorted.

    Returns:
        Paths such as ``"embed_dim"``, ``"step1.beta"`` and ``"step2.lambda"``.
    """
    return sorted(_method_leaves())


def canonical_method_path(path: str) -> str | None:
    """Return the YAML form of a dotted method path, or None if no such method parameter exists.

    Args:
        path: A dotted path with YAML names (``step2.lambda``) or Python names (``step2.lam``).

    Returns:
        The path with YAML names, e.g. ``"step2.lambda"``.
    """
    return _method_path_synonyms().get(path)


def _unknown_path_message(path: str) -> str:
    valid = method_parameter_paths()
    return f"not a method parameter; {_did_you_mean(path, valid)}valid paths: {', '.join(valid)}"


@functools.cache
def _leaf_adapter(path: str) -> TypeAdapter[Any]:
    """Build a validator for one method field, constraints included."""
    info = _method_leaves()[path].info
    if info.metadata:
        return TypeAdapter(Annotated[(info.annotation, *info.metadata)])
    return TypeAdapter(info.annotation)


def _leaf_kind(path: str) -> str:
    """Classify a method field as ``float``, ``int``, ``bool`` or ``choice`` (Literal or str).

    An optional field (``int | None``) is classified by its non-null type.
    """
    annotation = _method_leaves()[path].info.annotation
    if typing.get_origin(annotation) in (Union, type(int | None)):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal or annotation is str:
        return "choice"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    return "float"


# --------------------------------------------------------------------------------------------
# Search space entries
# --------------------------------------------------------------------------------------------


def _check_scalar(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    raise PydanticCustomError("scalar_type", "must be a string, number or boolean")


_Scalar = Annotated[Any, AfterValidator(_check_scalar)]
_FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


# The ``when`` field of every search-space entry: dotted method paths mapped to a value or a list
# of values. The entry is suggested only on trials where every named path has one of its values,
# which is the value sampled earlier in the space, or the study's fixed method value when the
# path is not sampled. After validation the keys are YAML paths and each value is a tuple
# converted to the path's field type. Each entry declares it last, so YAML dumps list it last.
_Conditions = Annotated[
    dict[str, Any] | None,
    Field(
        description=(
            "Suggest this entry only where each named method path has one of the given values, "
            "e.g. {step2.penalty: club}."
        )
    ),
]


class _SpaceEntry(_Spec):
    """Base of the search-space entries, each of which declares ``when`` (see :data:`_Conditions`)."""


class LogUniformParameter(_SpaceEntry):
    """A float sampled log-uniformly from ``[low, high]``."""

    type: Literal["loguniform"]
    low: _FiniteFloat = Field(gt=0.0)
    high: _FiniteFloat
    when: _Conditions = None

    @model_validator(mode="after")
    def _check_order(self) -> LogUniformParameter:
        if self.high <= self.low:
            _raise_issues([_Issue(("high",), f"must be greater than low ({self.low!r})", self.high)])
        return self


class UniformParameter(_SpaceEntry):
    """A float sampled uniformly from ``[low, high]``."""

    type: Literal["uniform"]
    low: _FiniteFloat
    high: _FiniteFloat
    when: _Conditions = None

    @model_validator(mode="after")
    def _check_order(self) -> UniformParameter:
        if self.high <= self.low:
            _raise_issues([_Issue(("high",), f"must be greater than low ({self.low!r})", self.high)])
        return self


class IntParameter(_SpaceEntry):
    """An integer sampled from ``[low, high]``, log-uniformly when ``log`` is true."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    when: _Conditions = None

    @model_validator(mode="after")
    def _check_range(self) -> IntParameter:
        issues = []
        if self.log and self.low < 1:
            issues.append(_Issue(("low",), "must be >= 1 when log is true", self.low))
        if self.high <= self.low:
            issues.append(_Issue(("high",), f"must be greater than low ({self.low!r})", self.high))
        if issues:
            _raise_issues(issues)
        return self


class CategoricalParameter(_SpaceEntry):
    """One of ``choices``, chosen by the sampler; a grid axis under ``algorithm: grid``."""

    type: Literal["categorical"]
    choices: tuple[_Scalar, ...] = Field(min_length=1)
    when: _Conditions = None


class GridParameter(_SpaceEntry):
    """A grid axis; allowed with ``algorithm: grid`` only."""

    type: Literal["grid"]
    values: tuple[_Scalar, ...] = Field(min_length=1)
    when: _Conditions = None


ParameterSpec = Annotated[
    Union[LogUniformParameter, UniformParameter, IntParameter, CategoricalParameter, GridParameter],
    Field(discriminator="type"),
]
_RANGE_PARAMETERS = (LogUniformParameter, UniformParameter, IntParameter)
_AXIS_PARAMETERS = (CategoricalParameter, GridParameter)
_AnyParameter = LogUniformParameter | UniformParameter | IntParameter | CategoricalParameter | GridParameter


def _axis_values(parameter: CategoricalParameter | GridParameter) -> tuple[Any, ...]:
    if isinstance(parameter, CategoricalParameter):
        return parameter.choices
    return parameter.values


def _field_error_message(exc: ValidationError) -> str:
    return "; ".join(_reword(error) for error in exc.errors(include_url=False))


def _check_range_entry(
    path: str, parameter: LogUniformParameter | UniformParameter | IntParameter
) -> list[_Issue]:
    """Check that a range suits the type of its method field and stays inside its constraints."""
    kind = _leaf_kind(path)
    if kind in ("choice", "bool"):
        message = f"method.{path} takes a fixed set of values; use type: categorical"
        return [_Issue(("type",), message, parameter.type)]
    if kind == "int" and not isinstance(parameter, IntParameter):
        message = f"method.{path} is an integer; use type: int"
        return [_Issue(("type",), message, parameter.type)]

    # Every numeric constraint in the schema is a lower or upper bound, so checking both ends
    # checks the whole range.
    issues = []
    for end in ("low", "high"):
        value = getattr(parameter, end)
        try:
            _leaf_adapter(path).validate_python(value)
        except ValidationError as exc:
            message = f"outside what method.{path} allows: {_field_error_message(exc)}"
            issues.append(_Issue((end,), message, value))
    return issues


def _coerce_axis_entry(
    path: str, parameter: CategoricalParameter | GridParameter
) -> tuple[CategoricalParameter | GridParameter, list[_Issue]]:
    """Convert each value to its method field's type (``0`` becomes ``0.0`` for a float field)."""
    key = "choices" if isinstance(parameter, CategoricalParameter) else "values"
    coerced = []
    issues = []
    for index, value in enumerate(_axis_values(parameter)):
        try:
            coerced.append(_leaf_adapter(path).validate_python(value))
        except ValidationError as exc:
            message = f"not valid for method.{path}: {_field_error_message(exc)}"
            issues.append(_Issue((key, index), message, value))
    if issues:
        return parameter, issues

    if len(set(coerced)) != len(coerced):
        return parameter, [_Issue((key,), "must not repeat a value", list(coerced))]
    return parameter.model_copy(update={key: tuple(coerced)}), []


_PARAMETER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ParameterSpec)


def _canonical_space_entries(space: Mapping[Any, Any]) -> tuple[dict[str, Any], list[_Issue]]:
    """Key the entries by YAML path (``step2.lam`` becomes ``step2.lambda``); report unknown paths."""
    entries: dict[str, Any] = {}
    issues = []
    for key, entry in space.items():
        path = canonical_method_path(str(key))
        if path is None:
            issues.append(_Issue((str(key),), _unknown_path_message(str(key)), key))
        elif path in entries:
            issues.append(_Issue((path,), f"given twice (as {key!r} too)", key))
        elif not isinstance(entry, Mapping):
            message = (
                "must be a mapping such as {type: loguniform, low: 0.001, high: 10} with type one "
                f"of {', '.join(PARAMETER_TYPES)}; fixed values belong under method"
            )
            issues.append(_Issue((path,), message, entry))
        else:
            entries[path] = entry
    return entries, issues


def _validate_space_entry(path: str, entry: Any) -> tuple[Any, list[_Issue]]:
    """Validate one space entry and check it against its method field.

    Returns:
        The entry (axis values converted to the field's type), or None when it is invalid, and
        the issues, located relative to the entry.
    """
    try:
        parameter = _PARAMETER_ADAPTER.validate_python(entry)
    except ValidationError as exc:
        return None, _issues_from_error(exc)

    if isinstance(parameter, _RANGE_PARAMETERS):
        issues = _check_range_entry(path, parameter)
    else:
        parameter, issues = _coerce_axis_entry(path, parameter)
    return (None if issues else parameter), issues


def _check_conditions(
    path: str, parameter: _AnyParameter, order: list[str], checked: Mapping[str, Any]
) -> tuple[_AnyParameter, list[_Issue]]:
    """Check an entry's ``when`` and convert it to ``{YAML path: tuple of field-typed values}``.

    Args:
        path: The entry's YAML path.
        parameter: The validated entry.
        order: Every space path in file order. A condition path in the space must come first.
        checked: The entries that passed their own checks, keyed by path.

    Returns:
        The entry with its conditions converted, and the issues located relative to the space.
    """
    if parameter.when is None:
        return parameter, []
    if not parameter.when:
        return parameter, [_Issue((path, "when"), "must name at least one method path", {})]

    converted: dict[str, tuple[Any, ...]] = {}
    issues = []
    for key, raw in parameter.when.items():
        condition = canonical_method_path(str(key))
        loc = (path, "when", str(key))
        if condition is None:
            issues.append(_Issue(loc, _unknown_path_message(str(key)), key))
            continue
        if condition == path:
            issues.append(_Issue(loc, "an entry cannot depend on its own value", key))
            continue
        if condition in converted:
            issues.append(_Issue(loc, f"given twice (as {condition!r} too)", key))
            continue
        values, value_issues = _condition_values(condition, raw, loc)
        issues.extend(value_issues)
        if condition in order and order.index(condition) > order.index(path):
            message = (
                f"search.space.{condition} is sampled after this entry; move it above "
                f"search.space.{path} so that its value is known when this entry is suggested"
            )
            issues.append(_Issue(loc, message, key))
        elif condition in checked and not isinstance(checked[condition], _AXIS_PARAMETERS):
            message = (
                f"search.space.{condition} is sampled from a range, which matches a listed value "
                "almost never; condition on a categorical entry or on a fixed method value"
            )
            issues.append(_Issue(loc, message, key))
        converted[condition] = values
    if issues:
        return parameter, issues
    return parameter.model_copy(update={"when": converted}), []


def _condition_values(
    condition: str, raw: Any, loc: tuple[str | int, ...]
) -> tuple[tuple[Any, ...], list[_Issue]]:
    """Convert one condition's value, or list of values, to the field type of ``condition``."""
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        return (), [_Issue(loc, f"must be a value of method.{condition} or a non-empty list of them", raw)]
    converted = []
    issues = []
    for index, value in enumerate(values):
        item_loc = loc + (index,) if isinstance(raw, (list, tuple)) else loc
        if not isinstance(value, (str, bool, int, float)):
            issues.append(_Issue(item_loc, "must be a string, number or boolean", value))
            continue
        try:
            converted.append(_leaf_adapter(condition).validate_python(value))
        except ValidationError as exc:
            message = f"not valid for method.{condition}: {_field_error_message(exc)}"
            issues.append(_Issue(item_loc, message, value))
    return tuple(dict.fromkeys(converted)), issues


def _plain_conditions(when: Mapping[str, Any]) -> dict[str, Any]:
    """Render conditions as written in YAML: one value, or a list of several."""
    plain: dict[str, Any] = {}
    for key, values in when.items():
        if isinstance(values, tuple):
            plain[key] = values[0] if len(values) == 1 else list(values)
        else:
            plain[key] = values
    return plain


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


_FINAL_ONLY_METRIC_PREFIXES = ("probe/", "r2/")


class AshaSpec(_Spec):
    """ASHA early stopping; used with ``scheduler: asha`` only."""

    grace_period: int = Field(1, ge=1, description="Reports (epochs) before a trial may stop.")
    reduction_factor: float = Field(2.0, gt=1.0)
    metric: str | None = Field(
        None,
        description="Metric reported every epoch that ASHA compares, e.g. "
        "mi/shared_infonce_lower_bound; defaults to the study metric.",
    )
    mode: Literal["max", "min"] | None = Field(None, description="Defaults to the study mode.")


class SearchSpec(_Spec):
    """Search settings: sampler, metric, trial budget, seeds, scheduler and search space."""

    algorithm: Literal["tpe", "grid", "random"] = "tpe"
    metric: str | list[str]
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    num_trials: Annotated[int, Field(ge=1)] | None = None
    max_concurrent: int = Field(1, ge=1)
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field((0,), min_length=1)
    sampler_seed: int = Field(0, ge=0)
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaSpec = AshaSpec()
    space: dict[str, ParameterSpec] = Field(default_factory=dict)
    grids: tuple[dict[str, ParameterSpec], ...] = Field(
        (),
        description=(
            "A union of grids for algorithm grid: each block is a grid of its own axes, and the "
            "study visits the points of every block, so each method can have its own grid."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _repeat_mode_per_metric(cls, data: Any) -> Any:
        # Ray Tune's OptunaSearch creates a multi-objective study only when mode is a list, so a
        # single mode given with a list of metrics is repeated for each metric.
        if not isinstance(data, Mapping) or not isinstance(data.get("metric"), list):
            return data
        mode = data.get("mode", "max")
        if mode in ("max", "min"):
            return {**data, "mode": [mode] * len(data["metric"])}
        return data

    @field_validator("metric", mode="before")
    @classmethod
    def _check_metric_type(cls, value: Any) -> Any:
        is_list = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not isinstance(value, str) and not is_list:
            raise PydanticCustomError("metric_type", "must be a metric name or a list of metric names")
        return value

    @field_validator("metric", mode="after")
    @classmethod
    def _check_metric_names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        issues = []
        if not names:
            issues.append(_Issue((), "must name at least one metric", value))
        if len(set(names)) != len(names):
            issues.append(_Issue((), "must not repeat a metric", value))
        for index, name in enumerate(names):
            if not METRIC_NAME_PATTERN.match(name):
                loc: tuple[str | int, ...] = () if isinstance(value, str) else (index,)
                message = "may contain only letters, digits, '_', '/', '.', '-' and spaces"
                issues.append(_Issue(loc, message, name))
        if issues:
            _raise_issues(issues)
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _check_mode_type(cls, value: Any) -> Any:
        allowed = ("max", "min")
        is_list = isinstance(value, list) and all(item in allowed for item in value)
        if value not in allowed and not is_list:
            raise PydanticCustomError("mode_type", "must be 'max' or 'min', or a list of them")
        return value

    @field_validator("space", mode="wrap")
    @classmethod
    def _validate_space(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, Mapping):
            return handler(value)
        checked, issues = _checked_space(value)
        if issues:
            _raise_issues(issues)
        return handler(checked)

    @field_validator("grids", mode="wrap")
    @classmethod
    def _validate_grids(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, (list, tuple)):
            return handler(value)
        blocks, issues = [], []
        for index, block in enumerate(value):
            if not isinstance(block, Mapping) or not block:
                issues.append(_Issue((index,), "must be a non-empty mapping of grid axes", block))
                continue
            checked, block_issues = _checked_space(block)
            issues.extend(_Issue((index,) + issue.loc, issue.message, issue.value) for issue in block_issues)
            blocks.append(checked)
        if issues:
            _raise_issues(issues)
        return handler(blocks)

    @model_validator(mode="after")
    def _check_search(self) -> SearchSpec:
        issues = [
            *self._space_issues(),
            *self._seed_issues(),
            *self._objective_issues(),
            *self._trial_count_issues(),
        ]
        if issues:
            _raise_issues(issues)

        if self.scheduler == "none" and "asha" in self.model_fields_set:
            logger.warning("search.asha is ignored because search.scheduler is 'none'")
        if self.algorithm != "grid" and not self.space and not self.grids and (self.num_trials or 0) > 1:
            logger.warning(
                "search.space is empty, so all %d trials train the same setting with the same seed",
                self.num_trials,
            )
        return self

    @property
    def metrics(self) -> list[str]:
        """The metric names as a list, one per objective."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        """The modes as a list aligned with :attr:`metrics`."""
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    def _grid_union_issues(self) -> list[_Issue]:
        issues = []
        if self.algorithm != "grid":
            message = f"is allowed only with search.algorithm: grid (algorithm is {self.algorithm!r})"
            issues.append(_Issue(("grids",), message, f"{len(self.grids)} blocks"))
        if self.space:
            message = "must be empty when search.grids is given; put every axis into the grids blocks"
            issues.append(_Issue(("space",), message, sorted(self.space)))
        for index, block in enumerate(self.grids):
            for path, parameter in block.items():
                if not isinstance(parameter, _AXIS_PARAMETERS):
                    message = "must be grid or categorical, because a grids block contains grid axes only"
                    issues.append(_Issue(("grids", index, path, "type"), message, parameter.type))
                elif parameter.when is not None:
                    message = "is not allowed in a grids block; a block already applies to its own points only"
                    issues.append(_Issue(("grids", index, path, "when"), message, _plain_conditions(parameter.when)))
        return issues

    def _space_issues(self) -> list[_Issue]:
        if self.grids:
            return self._grid_union_issues()
        issues = []
        for path, parameter in self.space.items():
            if self.algorithm == "grid" and not isinstance(parameter, _AXIS_PARAMETERS):
                message = "must be grid or categorical because search.algorithm is 'grid'"
                issues.append(_Issue(("space", path, "type"), message, parameter.type))
            if self.algorithm != "grid" and isinstance(parameter, GridParameter):
                message = (
                    f"grid is allowed only with search.algorithm: grid (algorithm is "
                    f"{self.algorithm!r}); use categorical to let the sampler choose"
                )
                issues.append(_Issue(("space", path, "type"), message, parameter.type))
            if self.algorithm == "grid" and parameter.when is not None:
                message = (
                    "is not allowed with search.algorithm: grid, because the grid sampler sets every "
                    "axis on every trial and cannot leave one out; use algorithm tpe or random, or "
                    "one grid study per condition"
                )
                issues.append(_Issue(("space", path, "when"), message, _plain_conditions(parameter.when)))
        return issues

    def _seed_issues(self) -> list[_Issue]:
        issues = []
        if len(set(self.seeds)) != len(self.seeds):
            issues.append(_Issue(("seeds",), "must not repeat a seed", list(self.seeds)))
        if self.algorithm != "grid" and len(self.seeds) != 1:
            message = (
                f"must hold exactly one seed with algorithm {self.algorithm!r}; use algorithm: grid "
                "to repeat each setting over several seeds"
            )
            issues.append(_Issue(("seeds",), message, list(self.seeds)))
        return issues

    def _objective_issues(self) -> list[_Issue]:
        issues = []
        multi_objective = isinstance(self.metric, list) and len(self.metric) > 1
        if isinstance(self.mode, list):
            if isinstance(self.metric, str):
                message = "must be a single 'max' or 'min' because metric is a single name"
                issues.append(_Issue(("mode",), message, self.mode))
            elif len(self.mode) != len(self.metric):
                message = f"must have one entry per metric ({len(self.metric)})"
                issues.append(_Issue(("mode",), message, self.mode))
        if self.scheduler == "asha" and multi_objective:
            message = "asha needs a single metric; use scheduler: none with several metrics"
            issues.append(_Issue(("scheduler",), message, self.scheduler))
        if self.scheduler == "asha" and not multi_objective:
            asha_metric = self.asha.metric or (self.metric if isinstance(self.metric, str) else self.metric[0])
            if asha_metric.startswith(_FINAL_ONLY_METRIC_PREFIXES):
                message = (
                    "ASHA compares a metric every epoch, but probe/ and r2/ metrics exist only after "
                    "the last epoch; set asha.metric to a per-epoch metric such as "
                    "mi/shared_infonce_lower_bound (mode max) or step1/val/infonce (mode min)"
                )
                field = ("asha", "metric") if self.asha.metric else ("metric",)
                issues.append(_Issue(field, message, asha_metric))
        return issues

    def _trial_count_issues(self) -> list[_Issue]:
        if self.algorithm != "grid":
            if self.num_trials is None:
                message = f"required with algorithm {self.algorithm!r}"
                return [_Issue(("num_trials",), message)]
            return []

        axes = [parameter for block in (self.space, *self.grids) for parameter in block.values()]
        if not all(isinstance(parameter, _AXIS_PARAMETERS) for parameter in axes):
            return []  # _space_issues reports the entries that are not grid axes.
        points = _grid_point_count(self)
        expected = points * len(self.seeds)
        if self.num_trials is None:
            # The model is frozen; the default depends on other fields, so it is set in place here.
            self.__dict__["num_trials"] = expected
            return []
        if self.num_trials != expected:
            message = (
                f"must equal the number of grid points times the number of seeds, "
                f"{points} x {len(self.seeds)} = {expected}; leave it out to use that number"
            )
            return [_Issue(("num_trials",), message, self.num_trials)]
        return []


def _grid_point_count(search: SearchSpec) -> int:
    """Count the grid points (product of the axis lengths, or their sum over ``grids``), seeds excluded."""
    if search.grids:
        return sum(math.prod(len(_axis_values(parameter)) for parameter in block.values()) for block in search.grids)
    return math.prod(len(_axis_values(parameter)) for parameter in search.space.values())


def _checked_space(value: Mapping[str, Any]) -> tuple[dict[str, Any], list[_Issue]]:
    """Validate the entries of a search space one at a time, so every bad entry is reported at once."""
    entries, issues = _canonical_space_entries(value)
    checked: dict[str, Any] = {}
    for path, entry in entries.items():
        parameter, entry_issues = _validate_space_entry(path, entry)
        issues.extend(_Issue((path,) + issue.loc, issue.message, issue.value) for issue in entry_issues)
        if parameter is not None:
            checked[path] = parameter
    order = list(entries)
    for path, parameter in list(checked.items()):
        checked[path], condition_issues = _check_conditions(path, parameter, order, checked)
        issues.extend(condition_issues)
    return checked, issues


def method_value(method: MethodSpec, path: str) -> Any:
    """Return the value of a method field given by its dotted path.

    Args:
        method: Method settings.
        path: A dotted path with YAML or Python names, e.g. ``"step2.penalty"``.

    Returns:
        The field's value.

    Raises:
        ValueError: If ``path`` is not a method parameter.
    """
    canonical = canonical_method_path(path)
    if canonical is None:
        raise ValueError(f"unknown method path {path!r}: {_unknown_path_message(path)}")
    value: Any = method
    for attr in _method_leaves()[canonical].attrs:
        value = getattr(value, attr)
    return value


def _possible_values(path: str, method: MethodSpec, space: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Return the values ``path`` can take on a trial, or None when a range entry samples it.

    A conditional entry leaves the fixed method value on the trials where it is not suggested.
    """
    fixed = method_value(method, path)
    parameter = space.get(path)
    if parameter is None:
        return (fixed,)
    if not isinstance(parameter, _AXIS_PARAMETERS):
        return None
    values = _axis_values(parameter)
    return values if parameter.when is None else (*values, fixed)


def _values_text(values: tuple[Any, ...]) -> str:
    return ", ".join(repr(value) for value in dict.fromkeys(values))


def _conditional_space_issues(method: MethodSpec, space: Mapping[str, Any]) -> list[_Issue]:
    """Check the conditions and the penalty and temperature settings of a space against ``method``.

    Returns:
        Issues located relative to the study: conditions that no trial meets, settings of one
        step-2 penalty that would be suggested on trials of another, and learnable-temperature
        trials whose temperature would leave ``method.temperature_range``.
    """
    issues = []
    for path, parameter in space.items():
        for condition, allowed in (parameter.when or {}).items():
            possible = _possible_values(condition, method, space)
            if possible is None or set(possible) & set(allowed):
                continue
            message = (
                f"never holds: method.{condition} can only be {_values_text(possible)} (sampled in "
                "the space or fixed under method), so this entry would never be suggested"
            )
            issues.append(_Issue(("search", "space", path, "when", condition), message, list(allowed)))
    return (
        issues
        + _penalty_setting_issues(method, space)
        + _learnable_temperature_issues(method, space)
        + _unused_setting_issues(method, space)
    )


def _values_where_suggested(
    path: str, parameter: Any, method: MethodSpec, space: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Return the values of ``path`` on the trials where ``parameter`` is suggested."""
    values = _possible_values(path, method, space) or ()
    allowed = (parameter.when or {}).get(path)
    return values if allowed is None else tuple(value for value in values if value in allowed)


def _penalty_setting_issues(method: MethodSpec, space: Mapping[str, Any]) -> list[_Issue]:
    issues = []
    for name, owner in Step2Spec.penalty_settings.items():
        path = f"step2.{name}"
        if path not in space:
            continue
        penalties = _values_where_suggested("step2.penalty", space[path], method, space)
        others = tuple(penalty for penalty in penalties if penalty != owner)
        if others:
            message = (
                f"method.{path} is used only with step2.penalty {owner!r}, but this entry would also "
                f"be suggested with step2.penalty {_values_text(others)}; add when: {{step2.penalty: {owner}}}"
            )
            issues.append(_Issue(("search", "space", path), message))
    return issues


# Method sections that only some methods read. A trial of another method ignores them, so
# sampling them there spends trials on runs that differ in nothing they train. CLIP reads step 1
# but sets step1.beta to 0.
_SECTION_READERS = {
    "step1": ("disentangled_ssl", "clip"),
    "step2": ("disentangled_ssl",),
    "joint_opt": ("joint_opt",),
    "focal": ("focal",),
    "dmvae": ("dmvae",),
}
_PATH_READERS = {"step1.beta": ("disentangled_ssl",)}


def method_readers(path: str) -> tuple[str, ...] | None:
    """Return the methods that read a method setting, or None when every method reads it.

    Args:
        path: A dotted method path in YAML form, e.g. ``"focal.a"`` or ``"step1.beta"``.

    Example:
        >>> method_readers("step2.lambda"), method_readers("embed_dim")
        (('disentangled_ssl',), None)
    """
    if path in _PATH_READERS:
        return _PATH_READERS[path]
    section, _, _ = path.partition(".")
    return _SECTION_READERS.get(section) if "." in path else None


def _unused_setting_issues(method: MethodSpec, space: Mapping[str, Any]) -> list[_Issue]:
    """Return an issue for each entry that would be suggested on trials of a method that ignores it."""
    issues = []
    for path, parameter in space.items():
        readers = method_readers(path)
        if readers is None:
            continue
        names = _values_where_suggested("name", parameter, method, space)
        ignoring = tuple(name for name in names if name not in readers)
        if not ignoring:
            continue
        read_by = f"method.{path} is read only by method {_values_text(readers)}"
        if len(ignoring) == len(names):
            message = (
                f"{read_by}, but every trial that samples it runs method {_values_text(ignoring)}; "
                f"remove this entry or set method.name to {readers[0]!r}"
            )
        else:
            users = [name for name in names if name in readers]
            condition = users[0] if len(users) == 1 else users
            message = (
                f"{read_by}, but this entry would also be suggested on trials of method "
                f"{_values_text(ignoring)}, which ignore it; add when: {{name: {condition}}}, or with "
                "algorithm grid give each method its own block under search.grids"
            )
        issues.append(_Issue(("search", "space", path), message))
    return issues


def _learnable_temperature_issues(method: MethodSpec, space: Mapping[str, Any]) -> list[_Issue]:
    low, high = method.temperature_range
    parameter = space.get("temperature")
    if parameter is None:
        if "temperature_learnable" in space and not low <= method.temperature <= high:
            message = (
                f"can be true while method.temperature ({method.temperature!r}) lies outside "
                f"method.temperature_range [{low!r}, {high!r}], where a learnable temperature starts"
            )
            return [_Issue(("search", "space", "temperature_learnable"), message, "categorical")]
        return []
    if True not in _values_where_suggested("temperature_learnable", parameter, method, space):
        return []
    if isinstance(parameter, _AXIS_PARAMETERS):
        values = _axis_values(parameter)
    else:
        values = (parameter.low, parameter.high)
    outside = [value for value in values if not low <= value <= high]
    if not outside:
        return []
    message = (
        f"must stay in method.temperature_range [{low!r}, {high!r}] because temperature_learnable "
        "can be true on these trials and the learnable temperature starts at this value"
    )
    return [_Issue(("search", "space", "temperature"), message, outside)]


# --------------------------------------------------------------------------------------------
# Resources, evaluation, tracking and the study
# --------------------------------------------------------------------------------------------


class ResourceSpec(_Spec):
    """Resources of one trial (a Ray Train data-parallel group) and its restarts after a failure."""

    num_workers: int = Field(1, ge=1, description="Data-parallel workers per trial.")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(
        0.0,
        ge=0.0,
        description="GPUs per worker; a fraction (trials sharing a GPU) only with one worker per trial.",
    )
    max_failures: int = Field(
        2,
        ge=0,
        description=(
            "Times a trial restarts from its last checkpoint after its process, a worker or a node "
            "died. A trial whose own code raised (a non-finite loss, a bad setting) fails again at "
            "once on each restart, without training."
        ),
    )

    @model_validator(mode="after")
    def _check_gpu_fraction(self) -> ResourceSpec:
        gpus = self.gpus_per_worker
        if self.num_workers > 1 and gpus != int(gpus):
            message = (
                f"must be a whole number when resources.num_workers is {self.num_workers}, because "
                "NCCL refuses two workers of one group on the same GPU ('Duplicate GPU detected'). "
                "Use a fraction only with num_workers: 1, where trials share a GPU"
            )
            _raise_issues([_Issue(("gpus_per_worker",), message, gpus)])
        return self


class EvalSpec(_Spec):
    """Evaluation options of each trial."""

    probe_max_train_samples: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Training rows used to fit the linear probes; None uses all."
    )
    diagnostics_samples: int = Field(
        4096, ge=1, description="Held-out rows used for the per-epoch MI diagnostics."
    )
    checkpoint_every_epoch: bool = True
    checkpoints_to_keep: int = Field(
        2,
        ge=1,
        description=(
            "Checkpoints kept per trial: the best by the study's search metric, plus the latest "
            "when it is not among them, because a restarted trial resumes from it."
        ),
    )
    mi_every_n_epochs: int | None = Field(
        3,
        description=(
            "Fit the MI estimators of I(Zs_m; Zc_m) and regress the true latents after every epoch "
            "whose number is a multiple of this, and after the last epoch of each step; null turns "
            "these per-epoch diagnostics off."
        ),
    )
    mi_train_samples: int = Field(
        2000, description="Training rows the per-epoch MI estimators are fitted on (at least 16)."
    )
    mi_eval_samples: int = Field(
        1024,
        description="Held-out rows (the first of the test split) of the per-epoch MI estimates and R² (at least 16).",
    )
    mi_estimator_steps: int = Field(300, description="Adam steps of each per-epoch MI estimator (at least 1).")

    @field_validator("mi_every_n_epochs", mode="after")
    @classmethod
    def _check_mi_every_n_epochs(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise PydanticCustomError(
                "mi_every_n_epochs", "must be an integer >= 1, or null to turn the per-epoch MI and R² diagnostics off"
            )
        return value

    @field_validator("mi_train_samples", "mi_eval_samples", mode="after")
    @classmethod
    def _check_mi_rows(cls, value: int) -> int:
        # Equals dssl.eval.mi_diagnostics.MIN_DIAGNOSTIC_ROWS; tests/test_mi_diagnostics.py checks it.
        if value < 16:
            raise PydanticCustomError(
                "mi_rows",
                "must be >= 16, because the MI estimators and the 80/20 split of the R² regression "
                "need at least 16 rows",
            )
        return value

    @field_validator("mi_estimator_steps", mode="after")
    @classmethod
    def _check_mi_estimator_steps(cls, value: int) -> int:
        if value < 1:
            raise PydanticCustomError("mi_estimator_steps", "must be >= 1 optimiser step")
        return value


class TrackingSpec(_Spec):
    """MLflow tracking options."""

    experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment; set to the study name when left out."
    )
    reuse_step1: bool = Field(
        True,
        description=(
            "Load the step-1 model of an earlier trial on the same tracking server (this study or "
            "another) whose data, step-1 settings, seed and worker count match, instead of training it."
        ),
    )


_REUSED_STEP1_METRIC = (
    "is reported by step 1 only, and a trial that loads an earlier trial's step-1 model "
    "(tracking.reuse_step1: true) trains no step 1; set tracking.reuse_step1: false, or choose a "
    "metric that step 2 or the final evaluation reports"
)


class StudySpec(_Spec):
    """One study file."""

    name: str
    description: str | None = None
    data: DataSpec = SyntheticDataSpec()
    method: MethodSpec = MethodSpec()
    search: SearchSpec
    resources: ResourceSpec = ResourceSpec()
    eval: EvalSpec = EvalSpec()
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="before")
    @classmethod
    def _default_experiment(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return data

        tracking = data.get("tracking")
        if tracking is None:
            return {**data, "tracking": {"experiment": data["name"]}}
        if isinstance(tracking, Mapping) and tracking.get("experiment") is None:
            return {**data, "tracking": {**tracking, "experiment": data["name"]}}
        if isinstance(tracking, TrackingSpec) and tracking.experiment is None:
            return {**data, "tracking": TrackingSpec(experiment=data["name"])}
        return data

    @field_validator("name", mode="after")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not STUDY_NAME_PATTERN.match(value) or set(value) == {"."}:
            raise PydanticCustomError(
                "study_name",
                "must use only letters, digits, '_', '.' and '-' (it names folders and the "
                "MLflow experiment) and must not be only dots",
            )
        return value

    @model_validator(mode="after")
    def _check_step2_search(self) -> StudySpec:
        # Sampling step-2 settings while step 2 is off would spend trials on identical runs.
        if self.method.step2.enabled or "step2.enabled" in self.search.space:
            return self
        message = "searches a step-2 setting but method.step2.enabled is false"
        issues = [
            _Issue(("search", "space", path), message, path)
            for path in self.search.space
            if path.startswith("step2.")
        ]
        if issues:
            _raise_issues(issues)
        return self

    @model_validator(mode="after")
    def _check_conditional_space(self) -> StudySpec:
        # Conditions and penalty settings are checked against the fixed method values here,
        # because the search section alone does not know them. Each grids block is a space of
        # its own, so its issues are moved under search.grids.<index>.
        issues = _conditional_space_issues(self.method, self.search.space)
        for index, block in enumerate(self.search.grids):
            issues += [
                dataclasses.replace(issue, loc=("search", "grids", index) + issue.loc[2:])
                for issue in _conditional_space_issues(self.method, block)
            ]
        if issues:
            _raise_issues(issues)
        return self

    @model_validator(mode="after")
    def _check_metrics_and_workers(self) -> StudySpec:
        from dssl.study.metric_names import final_metric_names, per_epoch_metric_names

        issues = []
        available = final_metric_names(self)
        without_reuse = self.model_copy(update={"tracking": self.tracking.model_copy(update={"reuse_step1": False})})
        for index, metric in enumerate(self.search.metrics):
            if metric not in available:
                location = ("search", "metric") if isinstance(self.search.metric, str) else ("search", "metric", index)
                if metric in final_metric_names(without_reuse):
                    message = _REUSED_STEP1_METRIC
                else:
                    suggestion = _did_you_mean(metric, sorted(available))
                    message = (
                        f"is not a metric that trials of this study report; {suggestion}"
                        f"choose one of {', '.join(sorted(available))}"
                    )
                issues.append(_Issue(location, message, metric))
        if self.search.scheduler == "asha" and self.search.asha.metric is not None:
            per_epoch = per_epoch_metric_names(self)
            if self.search.asha.metric not in per_epoch:
                if self.search.asha.metric in per_epoch_metric_names(without_reuse):
                    message = _REUSED_STEP1_METRIC
                else:
                    message = f"must be a metric reported every epoch, one of {', '.join(sorted(per_epoch))}"
                issues.append(_Issue(("search", "asha", "metric"), message, self.search.asha.metric))
        issues += self._streaming_issues()
        workers = self.resources.num_workers
        if self.method.batch_size % workers != 0:
            message = (
                f"must be divisible by resources.num_workers ({workers}), because each worker "
                "trains on batch_size / num_workers rows"
            )
            issues.append(_Issue(("method", "batch_size"), message, self.method.batch_size))
        if issues:
            _raise_issues(issues)
        return self


    def _streaming_issues(self) -> list[_Issue]:
        if self.data.kind != "parquet" or not self.data.streaming:
            return []
        from dssl.data.manifest import load_manifest

        issues = []
        if load_manifest(self.data.manifest).split is None:
            message = (
                "needs a manifest with a split column, because a stream has no row numbers for a "
                f"random split; add one to {self.data.manifest} or set data.streaming: false"
            )
            issues.append(_Issue(("data", "streaming"), message, True))
        if self.eval.probe_max_train_samples is None:
            message = (
                "must be set with data.streaming: true, because the probes are fitted on training "
                "rows read into memory; e.g. 50000"
            )
            issues.append(_Issue(("eval", "probe_max_train_samples"), message, None))
        return issues


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping instead of keeping the last."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            # construct_mapping reports unhashable keys itself.
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _yaml_error_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    detail = f"{problem} ({context})" if context else problem
    return f"{where}invalid YAML: {detail}"


def validate_study(data: Any, path: str | os.PathLike[str] = "<memory>") -> StudySpec:
    """Validate parsed study data.

    Args:
        data: The study as parsed from YAML (a mapping).
        path: Label used in error messages, normally the file the data came from.

    Returns:
        The validated, fully defaulted study.

    Raises:
        StudyValidationError: If the data is not a mapping or breaks the schema.
    """
    if not isinstance(data, Mapping):
        fields = ", ".join(_yaml_field_names(StudySpec))
        message = f"the top level must be a mapping with the fields {fields}"
        if data is None:
            problem = StudyProblem("", f"the file is empty; {message}")
        else:
            problem = StudyProblem("", f"{message}, not a {type(data).__name__}", data)
        raise StudyValidationError(path, [problem])

    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise StudyValidationError(path, _problems_from_error(exc)) from None


def load_study(path: str | os.PathLike[str]) -> StudySpec:
    """Read and validate a study file.

    Args:
        path: The YAML study file.

    Returns:
        The validated, fully defaulted study.

    Raises:
        StudyValidationError: If the file is missing or unreadable, is not valid YAML (the message
            gives the line), has a top level that is not a mapping, or breaks the schema.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyValidationError(path, [StudyProblem("", "study file not found")]) from None
    except OSError as exc:
        message = f"cannot read the study file: {exc.strerror or exc}"
        raise StudyValidationError(path, [StudyProblem("", message)]) from None

    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise StudyValidationError(path, [StudyProblem("", _yaml_error_message(exc))]) from None

    spec = validate_study(data, path)
    logger.debug("loaded study %r from %s", spec.name, file)
    return spec


# --------------------------------------------------------------------------------------------
# Trial settings
# --------------------------------------------------------------------------------------------


def _set_nested(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data[key]
    data[keys[-1]] = value


def resolve_method(spec: StudySpec | MethodSpec, overrides: Mapping[str, Any]) -> MethodSpec:
    """Apply a trial's sampled values to the study's method settings and validate the result.

    Args:
        spec: The study (its ``method`` is the base) or a method spec.
        overrides: Values keyed by dotted method path, e.g. ``{"step1.beta": 0.5,
            "step2.lambda": 1.0}``; Python names (``step2.lam``) are accepted too.

    Returns:
        A new method spec with the overrides applied.

    Raises:
        ValueError: If a path is not a method parameter, or the result breaks the schema; the
            message names each field and value.
    """
    base = spec.method if isinstance(spec, StudySpec) else spec
    data = base.model_dump(by_alias=True)

    for raw_path, value in overrides.items():
        path = canonical_method_path(str(raw_path))
        if path is None:
            raise ValueError(f"unknown method override {raw_path!r}: {_unknown_path_message(str(raw_path))}")
        _set_nested(data, path.split("."), value)

    try:
        return MethodSpec.model_validate(data)
    except ValidationError as exc:
        lines = [problem.render() for problem in _problems_from_error(exc, ("method",))]
        raise ValueError("invalid method overrides:\n" + "\n".join(lines)) from None


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, str | float | int | bool]) -> None:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + ".", out)
        elif isinstance(value, (str, float, int, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value)


def flatten_params(spec_or_model: StudySpec | BaseModel) -> dict[str, str | float | int | bool]:
    """Flatten method settings into dotted names, e.g. for MLflow parameters.

    Args:
        spec_or_model: A study (its ``method`` is flattened), a method spec, or any other study
            model (flattened as is).

    Returns:
        Values keyed by dotted YAML name, e.g. ``"hidden_dim"``, ``"step1.beta"``,
        ``"step2.lambda"``. Lists and ``None`` are JSON-encoded strings.
    """
    model = spec_or_model.method if isinstance(spec_or_model, StudySpec) else spec_or_model
    if not isinstance(model, BaseModel):
        raise ValueError(f"expected a StudySpec or a pydantic model, got {type(model).__name__}")

    out: dict[str, str | float | int | bool] = {}
    _flatten(model.model_dump(mode="json", by_alias=True), "", out)
    return out


def dump_resolved_yaml(spec: StudySpec) -> str:
    """Render the fully defaulted study as YAML, with YAML field names (``lambda``).

    Args:
        spec: A validated study.

    Returns:
        YAML text that :func:`load_study` reads back to an equal study.
    """
    data = spec.model_dump(mode="json", by_alias=True)
    if spec.search.scheduler != "asha":
        # Without ASHA the block has no effect, and reading it back would warn that it is ignored.
        data["search"].pop("asha", None)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
