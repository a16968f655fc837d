"""DisentangledSSL: the shared step (step 1) and the specific step (step 2) as PyTorch modules.

Each model returns its loss terms for a batch as a dict of scalar tensors with the key
``"loss"`` holding the value to minimise, and embeds inputs for evaluation. The training loop
(:mod:`dssl.train.loop`) is the same for both steps.

Step 1, per modality pair (x1, x2):

    e_m = f_cm(x_m)                       deterministic shared embedding, (B, k)
    mu_m, z_m = head(e_m)                 mean direction and a reparameterised sample
    loss = InfoNCE(z1, z2; tau) + beta * penalty(mu1, mu2)

Step 2, with the step-1 encoders frozen and two augmented views x' = T(x), v = T(x'):

    s_m = f_sm(concat(x_m, e_m))          specific embedding, (B, k)
    h1  = normalise(concat(s1(x1'), e2(x2')))   and the same for view v
    loss = InfoNCE(h1, h1v) + InfoNCE(h2, h2v) + lambda * overlap(s_m, e_m)

``method.step2.penalty`` selects the overlap: ``orthogonality`` (the reference's), ``club`` (the
CLUB upper bound on I(s_m; e_m), whose variational networks train alongside the encoders) or
``hsic`` (Gaussian-kernel HSIC). Each is summed over the two modalities and averaged over the two
views. With ``method.temperature_learnable`` each step learns its own InfoNCE temperature.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dssl.data.augment import augment
from dssl.methods.base import SINGLE_PROCESS, Phase, PhaseModel
from dssl.nn.deterministic import DeterministicHead
from dssl.nn.encoders import MLPEncoder
from dssl.nn.gaussian import GaussianHead
from dssl.nn.precision import encoder_autocast
from dssl.nn.vmf import VonMisesFisherHead
from dssl.objectives.club import ClubEstimator
from dssl.objectives.conditional_mi import conditional_mi_penalty, conditional_mi_upper_bound_nats
from dssl.objectives.hsic import hsic
from dssl.objectives.infonce import symmetric_infonce
from dssl.objectives.overlap import orthogonality_penalty
from dssl.train.distributed import DataParallelContext

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec


class _InwardClamp(torch.autograd.Function):
    """Clamp a tensor to [low, high], with a backward pass that keeps gradients pointing into the range.

    A plain clamp has a zero gradient outside the range, so a parameter that an optimiser step
    carries past a bound would stay there for good. Here the gradient is zeroed only where a
    descent step would move the value further out.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, low: float, high: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(value)
        ctx.low, ctx.high = low, high
        return value.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (value,) = ctx.saved_tensors
        # A descent step moves by -grad: below the range it must rise (grad < 0), above it fall.
        outward = ((value < ctx.low) & (grad > 0)) | ((value > ctx.high) & (grad < 0))
        return grad.masked_fill(outward, 0.0), None, None


class LearnableTemperature(nn.Module):
    """A learnt softmax temperature tau = exp(log_tau), clamped to [low, high] in the forward pass.

    The parameter is the log-temperature, so Adam's steps are relative changes of tau.

    Args:
        initial: Starting temperature, in [low, high].
        low: Smallest temperature the forward pass returns, > 0.
        high: Largest temperature the forward pass returns, > low.

    Raises:
        ValueError: If the range is not 0 < low < high or ``initial`` lies outside it.

    Example:
        >>> temperature = LearnableTemperature(0.07, low=0.01, high=1.0)
        >>> round(float(temperature()), 6)
        0.07
        >>> [name for name, _ in temperature.named_parameters()]
        ['log_temperature']
    """

    def __init__(self, initial: float, low: float, high: float) -> None:
        super().__init__()
        if not 0.0 < low < high < math.inf:
            raise ValueError(f"temperature range must satisfy 0 < low < high, got low {low!r} and high {high!r}")
        if not low <= initial <= high:
            raise ValueError(f"initial temperature must lie in [{low!r}, {high!r}], got {initial!r}")
        self.low = float(low)
        self.high = float(high)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(initial)))

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"

    def forward(self) -> torch.Tensor:
        """Return the temperature as a scalar tensor that carries the gradient to log_tau."""
        return _InwardClamp.apply(self.log_temperature, math.log(self.low), math.log(self.high)).exp()


def _make_temperature(method: MethodSpec) -> LearnableTemperature | None:
    """Return a learnable temperature when ``method.temperature_learnable``, else None."""
    if not method.temperature_learnable:
        return None
    low, high = method.temperature_range
    return LearnableTemperature(method.temperature, low, high)


def _gathered_infonce(
    a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor, parallel: DataParallelContext
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows ``a``, ``b`` (B, d) against every worker's rows."""
    if not parallel.is_distributed:
        return symmetric_infonce(a, b, temperature)
    a_all, offset = parallel.gather(a)
    b_all, _ = parallel.gather(b)
    return symmetric_infonce(a, b, temperature, z1_all=a_all, z2_all=b_all, offset=offset)


def _make_head(head: str, kappa: float) -> VonMisesFisherHead | GaussianHead | DeterministicHead:
    if head == "vmf":
        return VonMisesFisherHead(kappa)
    if head == "gaussian":
        return GaussianHead()
    if head == "deterministic":
        return DeterministicHead()
    raise ValueError(f"unknown head {head!r}; expected 'vmf', 'gaussian' or 'deterministic'")


def _penalty_family(head: str) -> str:
    """Return the head whose penalty formulas apply: a deterministic head uses the vMF ones."""
    return "vmf" if head == "deterministic" else head


def _overlap_penalty(
    s1: torch.Tensor,
    c1: torch.Tensor,
    s2: torch.Tensor,
    c2: torch.Tensor,
    batch: int,
    parallel: DataParallelContext,
) -> torch.Tensor:
    """Return the step-2 orthogonality penalty over both views and both modalities.

    ``s_m``, ``c_m`` are (2B, k): rows [:B] belong to view x', rows [B:] to view v. The penalty
    is a Frobenius norm of a cross-correlation over the batch, not a mean over rows, so with
    several workers it is computed on the gathered global batch (gradients flow back through
    the gather). Its scale is half the sum of the four norms, as in the authors' reference code,
    so that their lambda grid applies unchanged.
    """
    if parallel.is_distributed:
        s1, c1, s2, c2 = (_gather_views(views, batch, parallel) for views in (s1, c1, s2, c2))
        batch = batch * parallel.world_size

    # The four (view, modality) pairs go through one batched call, stacked as (4, B, k):
    # modality 1 view x', modality 1 view v, then the same for modality 2.
    specific = torch.cat([s1, s2]).view(4, batch, -1)
    shared = torch.cat([c1, c2]).view(4, batch, -1)
    return 0.5 * orthogonality_penalty(specific, shared).sum()


def _hsic_overlap(
    s1: torch.Tensor,
    c1: torch.Tensor,
    s2: torch.Tensor,
    c2: torch.Tensor,
    batch: int,
    parallel: DataParallelContext,
    sigma: float | None,
) -> torch.Tensor:
    """Return the step-2 HSIC penalty over both views and both modalities.

    ``s_m``, ``c_m`` are (2B, k), rows [:B] from view x' and rows [B:] from view v. Each
    (view, modality) pair contributes the Gaussian-kernel HSIC between the row-normalised
    specific and shared codes: on unit rows a fixed ``sigma`` has the same meaning all through
    training, and the penalty cannot be lowered by rescaling the codes. HSIC is a double sum over
    row pairs, not a mean over rows, so with several workers it is computed on the gathered
    global batch, as the orthogonality penalty is. The scale is half the sum of the four values,
    the orthogonality penalty's convention.
    """
    if parallel.is_distributed:
        s1, c1, s2, c2 = (_gather_views(views, batch, parallel) for views in (s1, c1, s2, c2))
        batch = batch * parallel.world_size

    total = s1.new_zeros(())
    for specific, shared in ((s1, c1), (s2, c2)):
        specific_unit = F.normalize(specific, dim=1)
        shared_unit = F.normalize(shared, dim=1)
        for rows in (slice(0, batch), slice(batch, 2 * batch)):
            total = total + hsic(specific_unit[rows], shared_unit[rows], sigma_x=sigma, sigma_y=sigma)
    return 0.5 * total


def _club_codes(codes: torch.Tensor) -> torch.Tensor:
    """Return the rows of ``codes`` (N, k) scaled to norm sqrt(k): unit RMS per coordinate.

    q starts at N(0, I) (see :func:`_make_club`), which suits codes of that scale. With the
    reference initialisation the raw codes start about 100 times smaller and would need a
    log-variance near -9. Adam at the step-2 learning rate of 1e-4 moves q's output by about 1e-4
    per step, far too slowly for the 8400 steps of the reference step 2. Like the orthogonality
    penalty, CLUB therefore compares directions, and the norm of s is not penalised.
    """
    return F.normalize(codes, dim=1) * math.sqrt(codes.shape[1])


def _make_club(dim: int, hidden_dim: int) -> ClubEstimator:
    """Build q(s | c) for (N, dim) codes with its output layer at zero.

    The zero output layer starts q at N(0, I) for every c. On the unit-RMS codes of
    :func:`_club_codes` that is a fair first guess (negative log-likelihood 0.5 * dim * (1 + log 2 pi)
    nats), and the CLUB estimate starts at exactly 0, growing only as q learns a dependence of s on c.
    """
    # NOTE: how closely q fits p(s | c) by the end of a full-length step 2 has been measured only in
    # short test runs; the logged step2/val/club_learning_loss shows the fit of each trial.
    club = ClubEstimator(dim, dim, hidden_dim)
    nn.init.zeros_(club.output.weight)
    nn.init.zeros_(club.output.bias)
    return club


def _club_overlap(
    clubs: nn.ModuleList,
    s1: torch.Tensor,
    c1: torch.Tensor,
    s2: torch.Tensor,
    c2: torch.Tensor,
    batch: int,
    parallel: DataParallelContext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the step-2 CLUB penalty and the CLUB networks' learning loss.

    ``clubs[m]`` models q(s_m | c_m) for modality m. Inputs are (2B, k) view-stacked rows as in
    :func:`_hsic_overlap`, passed through :func:`_club_codes`. The penalty is half the sum of the
    four (view, modality) CLUB estimates; its gradient reaches the specific codes and not q.
    The learning loss is the sum over modalities of the negative log-likelihood of q over both
    views' local rows; its gradient reaches only q.

    CLUB's second term averages log q(s_j | c_i) over all pairs (i, j) of the batch, which pairs
    rows of different workers, so with several workers the estimate is computed on the gathered
    global batch (every worker gets the same value, and gradients flow back through the gather).
    The learning loss is a mean over rows, so each worker uses its own rows and the averaged
    gradients equal those of the global batch.
    """
    x1, y1, x2, y2 = (_club_codes(codes) for codes in (c1, s1, c2, s2))
    learning = clubs[0].learning_loss(x1, y1) + clubs[1].learning_loss(x2, y2)
    if parallel.is_distributed:
        x1, y1, x2, y2 = (_gather_views(views, batch, parallel) for views in (x1, y1, x2, y2))
        batch = batch * parallel.world_size

    total = y1.new_zeros(())
    for club, x, y in ((clubs[0], x1, y1), (clubs[1], x2, y2)):
        for rows in (slice(0, batch), slice(batch, 2 * batch)):
            total = total + club(x[rows], y[rows])
    return 0.5 * total, learning


def _augment_pair(
    x1: torch.Tensor, x2: torch.Tensor, noise_std: float, drop_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment both modalities' rows, in one call when they have the same width.

    ``augment`` treats rows independently, so one call on the stacked (2B, d) rows draws from
    the same distribution as two calls and pays the per-call cost once.
    """
    if x1.shape[1] != x2.shape[1] or x1.dtype != x2.dtype:
        return augment(x1, noise_std, drop_fraction), augment(x2, noise_std, drop_fraction)
    both = augment(torch.cat([x1, x2]), noise_std, drop_fraction)
    return both[: x1.shape[0]], both[x1.shape[0] :]


def _gather_views(views: torch.Tensor, batch: int, parallel: DataParallelContext) -> torch.Tensor:
    """Gather (2B, k) view-stacked rows into (2WB, k): every worker's x' rows, then every v row."""
    first, _ = parallel.gather(views[:batch])
    second, _ = parallel.gather(views[batch:])
    return torch.cat([first, second])


class SharedModel(PhaseModel):
    """Step 1: one shared encoder per modality with a probabilistic head.

    Args:
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings (encoder sizes, temperature, step-1 weights).
    """

    def __init__(self, x1_dim: int, x2_dim: int, method: MethodSpec) -> None:
        super().__init__()
        self.method = method
        step1 = method.step1
        encoder_args = dict(
            out_dim=method.embed_dim,
            hidden_dim=method.hidden_dim,
            num_hidden_layers=method.num_hidden_layers,
            init_std=method.init_std,
        )
        self.encoder1 = MLPEncoder(x1_dim, **encoder_args)
        self.encoder2 = MLPEncoder(x2_dim, **encoder_args)
        self.head = _make_head(step1.head, step1.kappa)
        self.learned_temperature = _make_temperature(method)

    def temperature(self) -> float | torch.Tensor:
        """Return the InfoNCE temperature: the learnt one (a scalar tensor) or the fixed number."""
        if self.learned_temperature is None:
            return self.method.temperature
        return self.learned_temperature()

    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the deterministic shared embeddings e1, e2, each (B, embed_dim)."""
        return self.encoder1(x1), self.encoder2(x2)

    def representations(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``shared1`` = e1 and ``shared2`` = e2, the embeddings before normalisation."""
        e1, e2 = self.embed(x1, x2)
        return {"shared1": e1, "shared2": e2}

    def _sample_both(
        self, e1: torch.Tensor, e2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return mu1, mu2 and the L2-normalised samples z1, z2 of both modalities, each (B, k).

        The head samples every row independently, so both modalities go through one call on
        the stacked (2B, k) embeddings: the sampler's fixed per-call cost is paid once. Rows
        [:B] belong to modality 1.
        """
        batch = e1.shape[0]
        mu, z = self.head.sample(torch.cat([e1, e2]))
        if isinstance(self.head, GaussianHead):
            # vMF samples and deterministic directions already have unit norm.
            z = F.normalize(z, dim=1)
        return mu[:batch], mu[batch:], z[:batch], z[batch:]

    def loss_terms(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        parallel: DataParallelContext = SINGLE_PROCESS,
    ) -> dict[str, torch.Tensor]:
        """Compute the step-1 loss terms for a local batch x1 (B, d1), x2 (B, d2)."""
        step1 = self.method.step1
        if step1.augment and self.training:
            # The reference trains step 1 on one augmented view of each input.
            x1, x2 = _augment_pair(x1, x2, step1.noise_std, step1.drop_fraction)
        with encoder_autocast(self.method.precision, x1.device, enabled=self.training):
            e1, e2 = self.embed(x1, x2)
        mu1, mu2, z1, z2 = self._sample_both(e1.float(), e2.float())

        temperature = self.temperature()
        infonce = _gathered_infonce(z1, z2, temperature, parallel)
        # Both the vMF and the deterministic head return unit mean directions.
        penalty = conditional_mi_penalty(
            mu1,
            mu2,
            scale=step1.penalty,
            kappa=step1.kappa,
            head=_penalty_family(step1.head),
            unit_rows=step1.head != "gaussian",
        )
        loss = infonce + step1.beta * penalty
        terms = {"loss": loss, "infonce": infonce, "cmi_penalty": penalty}
        if isinstance(temperature, torch.Tensor):
            terms["temperature"] = temperature.detach()
        return terms

    @torch.no_grad()
    def diagnostics(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, float]:
        """Compute held-out MI diagnostics on one batch (B rows of each modality).

        Returns:
            ``infonce`` (nats), ``mi/shared_infonce_lower_bound`` = log(B) - InfoNCE (nats),
            ``mi/cmi_upper_bound_kl`` = the symmetrised E KL on the KL scale (nats).
        """
        e1, e2 = self.embed(x1, x2)
        mu1, mu2, z1, z2 = self._sample_both(e1, e2)
        infonce = symmetric_infonce(z1, z2, self.temperature())
        # NOTE: a deterministic head has no posterior, so its bound is reported as if it were a vMF
        # head of the configured kappa. It is comparable with vMF trials only.
        upper = conditional_mi_upper_bound_nats(
            mu1, mu2, kappa=self.method.step1.kappa, head=_penalty_family(self.method.step1.head)
        )
        batch = x1.shape[0]
        return {
            "infonce": float(infonce),
            "mi/shared_infonce_lower_bound": float(torch.log(torch.tensor(float(batch))) - infonce),
            "mi/cmi_upper_bound_kl": float(upper.mean()),
        }


class SpecificModel(PhaseModel):
    """Step 2: one specific encoder per modality on top of frozen step-1 shared encoders.

    Args:
        shared: The trained step-1 model. Its parameters are frozen here.
        x1_dim: Feature dimension of modality 1.
        x2_dim: Feature dimension of modality 2.
        method: The resolved method settings.
    """

    def __init__(self, shared: SharedModel, x1_dim: int, x2_dim: int, method: MethodSpec) -> None:
        super().__init__()
        self.method = method
        self.shared = shared
        for parameter in self.shared.parameters():
            parameter.requires_grad_(False)
        self.shared.eval()

        encoder_args = dict(
            out_dim=method.embed_dim,
            hidden_dim=method.hidden_dim,
            num_hidden_layers=method.num_hidden_layers,
            init_std=method.init_std,
        )
        self.specific1 = MLPEncoder(x1_dim + method.embed_dim, **encoder_args)
        self.specific2 = MLPEncoder(x2_dim + method.embed_dim, **encoder_args)
        self.learned_temperature = _make_temperature(method)
        # One CLUB network q(s_m | c_m) per modality, trained alongside the encoders.
        self.club: nn.ModuleList | None = None
        if method.step2.penalty == "club":
            hidden = method.step2.club_hidden_dim or method.step2.default_club_hidden_dim
            self.club = nn.ModuleList([_make_club(method.embed_dim, hidden) for _ in range(2)])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Return the specific encoders' parameters, the learnt temperature's and the CLUB networks'."""
        parameters = [*self.specific1.parameters(), *self.specific2.parameters()]
        for module in (self.learned_temperature, self.club):
            if module is not None:
                parameters.extend(module.parameters())
        return parameters

    def temperature(self) -> float | torch.Tensor:
        """Return step 2's InfoNCE temperature: its own learnt one or the fixed number."""
        if self.learned_temperature is None:
            return self.method.temperature
        return self.learned_temperature()

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("shared.",)

    def train(self, mode: bool = True) -> SpecificModel:
        super().train(mode)
        self.shared.eval()
        return self

    def _specific_and_shared(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            c1, c2 = self.shared.embed(x1, x2)
        s1 = self.specific1(torch.cat([x1, c1], dim=1))
        s2 = self.specific2(torch.cat([x2, c2], dim=1))
        return s1, s2, c1, c2

    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the specific embeddings s1, s2 (B, embed_dim) of clean inputs."""
        s1, s2, _, _ = self._specific_and_shared(x1, x2)
        return s1, s2

    def representations(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``specific1`` = s1 and ``specific2`` = s2 of clean inputs."""
        s1, s2 = self.embed(x1, x2)
        return {"specific1": s1, "specific2": s2}

    def _augmented_views(
        self, x1: torch.Tensor, x2: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return both views of each modality stacked as [x' ; v], each (2B, d_m).

        The four augmentations draw from ``generator`` in the order x1', x2', v1, v2.
        """
        step2 = self.method.step2
        x1_first = augment(x1, step2.noise_std, step2.drop_fraction, generator)
        x2_first = augment(x2, step2.noise_std, step2.drop_fraction, generator)
        x1_second = augment(x1_first, step2.noise_std, step2.drop_fraction, generator)
        x2_second = augment(x2_first, step2.noise_std, step2.drop_fraction, generator)
        return torch.cat([x1_first, x1_second]), torch.cat([x2_first, x2_second])

    def loss_terms(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        parallel: DataParallelContext = SINGLE_PROCESS,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the step-2 loss terms for a local batch x1 (B, d1), x2 (B, d2)."""
        batch = x1.shape[0]
        x1_views, x2_views = self._augmented_views(x1, x2, generator)

        # Both views go through each encoder as one (2B, d) batch: half the operator calls of
        # two separate passes and larger matrix products. Rows [:B] are x', rows [B:] are v.
        with encoder_autocast(self.method.precision, x1.device, enabled=self.training):
            codes = self._specific_and_shared(x1_views, x2_views)
        s1, s2, c1, c2 = (code.float() for code in codes)

        # Modality 1's joint code pairs its specific embedding with the other modality's
        # frozen shared embedding, so the InfoNCE term rewards what X2 does not explain.
        h1 = F.normalize(torch.cat([s1, c2], dim=1), dim=1)
        h2 = F.normalize(torch.cat([s2, c1], dim=1), dim=1)
        temperature = self.temperature()
        infonce1 = _gathered_infonce(h1[:batch], h1[batch:], temperature, parallel)
        infonce2 = _gathered_infonce(h2[:batch], h2[batch:], temperature, parallel)

        step2 = self.method.step2
        terms: dict[str, torch.Tensor] = {}
        if self.club is not None:
            overlap, learning = _club_overlap(self.club, s1, c1, s2, c2, batch, parallel)
            # The learning loss moves only q and the estimate only the encoders (see ClubEstimator),
            # so one backward pass through their sum trains both.
            loss = infonce1 + infonce2 + step2.lam * overlap + learning
            terms["club_learning_loss"] = learning
        else:
            if step2.penalty == "hsic":
                overlap = _hsic_overlap(s1, c1, s2, c2, batch, parallel, step2.hsic_sigma)
            else:
                overlap = _overlap_penalty(s1, c1, s2, c2, batch, parallel)
            loss = infonce1 + infonce2 + step2.lam * overlap
        terms = {"loss": loss, "infonce1": infonce1, "infonce2": infonce2, "overlap": overlap, **terms}
        if isinstance(temperature, torch.Tensor):
            terms["temperature"] = temperature.detach()
        return terms

    @torch.no_grad()
    def diagnostics(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, float]:
        """Compute held-out step-2 terms on one batch with a fixed augmentation seed."""
        generator = torch.Generator(device=x1.device).manual_seed(0)
        terms = self.loss_terms(x1, x2, generator=generator)
        batch = x1.shape[0]
        log_batch = float(torch.log(torch.tensor(float(batch))))
        diagnostics = {
            "infonce1": float(terms["infonce1"]),
            "infonce2": float(terms["infonce2"]),
            "overlap": float(terms["overlap"]),
            "mi/specific1_infonce_lower_bound": log_batch - float(terms["infonce1"]),
            "mi/specific2_infonce_lower_bound": log_batch - float(terms["infonce2"]),
        }
        if "club_learning_loss" in terms:
            # Held-out negative log-likelihood of q: how well CLUB's networks fit p(s | c).
            diagnostics["club_learning_loss"] = float(terms["club_learning_loss"])
        return diagnostics


STEP1_TERMS = ("loss", "infonce", "cmi_penalty")
STEP1_DIAGNOSTICS = ("infonce", "mi/shared_infonce_lower_bound", "mi/cmi_upper_bound_kl")
STEP2_TERMS = ("loss", "infonce1", "infonce2", "overlap")
STEP2_DIAGNOSTICS = (
    "infonce1",
    "infonce2",
    "overlap",
    "mi/specific1_infonce_lower_bound",
    "mi/specific2_infonce_lower_bound",
)


def _temperature_terms(method: MethodSpec) -> tuple[str, ...]:
    return ("temperature",) if method.temperature_learnable else ()


def step1_terms(method: MethodSpec) -> tuple[str, ...]:
    """Return the step-1 training terms: :data:`STEP1_TERMS`, plus ``temperature`` when it is learnt."""
    return STEP1_TERMS + _temperature_terms(method)


def step2_terms(method: MethodSpec) -> tuple[str, ...]:
    """Return the step-2 training terms for the method's settings.

    :data:`STEP2_TERMS`, plus ``club_learning_loss`` with ``penalty: club`` and ``temperature``
    when the temperature is learnt. ``overlap`` is the value of the configured penalty.
    """
    club = ("club_learning_loss",) if method.step2.penalty == "club" else ()
    return STEP2_TERMS + club + _temperature_terms(method)


def step2_diagnostics(method: MethodSpec) -> tuple[str, ...]:
    """Return the step-2 held-out diagnostics: :data:`STEP2_DIAGNOSTICS`, plus CLUB's learning loss with club."""
    club = ("club_learning_loss",) if method.step2.penalty == "club" else ()
    return STEP2_DIAGNOSTICS + club


def disentangled_ssl_phases(method: MethodSpec, x1_dim: int, x2_dim: int) -> list[Phase]:
    """Return step 1 and, when ``method.step2.enabled``, step 2 of DisentangledSSL.

    Step 2 builds its model on the trained step-1 model of the same trial.
    """
    phases = [
        Phase(
            name="step1",
            epochs=method.step1.epochs,
            lr=method.step1.lr,
            build=lambda previous: SharedModel(x1_dim, x2_dim, method),
            train_terms=step1_terms(method),
            diagnostics=STEP1_DIAGNOSTICS,
            representations=("shared1", "shared2"),
        )
    ]
    if method.step2.enabled:
        phases.append(
            Phase(
                name="step2",
                epochs=method.step2.epochs,
                lr=method.step2.lr,
                build=lambda previous: SpecificModel(_shared_of(previous), x1_dim, x2_dim, method),
                train_terms=step2_terms(method),
                diagnostics=step2_diagnostics(method),
                representations=("specific1", "specific2"),
            )
        )
    return phases


def _shared_of(previous: list[PhaseModel]) -> SharedModel:
    shared = previous[0]
    if not isinstance(shared, SharedModel):
        raise TypeError(f"step 2 needs the step-1 SharedModel, got {type(shared).__name__}")
    return shared
