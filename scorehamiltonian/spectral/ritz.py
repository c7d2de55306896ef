"""Rayleigh-Ritz upper bounds on the spectral gap from samples of p_t (THEORY section 2, route (b)).

The gap lambda_1(t) of the Score Hamiltonian is the inverse Poincare constant of p_t,

    lambda_1 = inf over f with E_p f = 0 of  E_p |grad f|^2 / Var_p f     (units 1 / x^2),

with x in the units of the process (the data). Over a basis phi_1..phi_m the Ritz values are
the generalised eigenvalues of A c = theta B c with

    A_ij = E_p[grad phi_i . grad phi_j],   B_ij = Cov_p(phi_i, phi_j),

and with exact expectations theta_k >= lambda_k (Courant-Fischer). Only samples of p_t and
closed-form derivatives of the basis are needed: no score divergence and no grid, so this is
the route for high dimension.

The model's gap, not the data's (``form="model"``, the default for learned scores). The Dirichlet form above
depends on the samples alone. With the score s_t of a model the toolkit uses instead the
quadratic form of the model's own generator L f = Laplacian f + s_t . grad f,

    A_ij = -(1/2) E_q[phi_i L phi_j + phi_j L phi_i],   q the law of the samples,

so that the samples only place the basis and the quadrature. Integrating by parts under q,
-E_q[f L f] = E_q|grad f|^2 + E_q[f grad f . (grad log q - s_t)]: when s_t is the samples'
score it is the Dirichlet form (the same Ritz values in expectation), and otherwise it moves
by -E_q[f grad f . e] (e = s_t - grad log q), which is the first-order change
<psi_1, delta V psi_1> of lambda_1 of the Score Hamiltonian when its potential is built from
s_t instead (psi_1 = f_1 sqrt(q); the |e|^2 terms are second order). A wrong model then
gives its own gap, to first order, not the data's; with exact expectations and an exact score
the values are again upper bounds. Laplacians of the basis functions are closed forms
(Hermite, tanh) or forward-mode autograd (network); ``form="data"`` keeps the Dirichlet form.
The basis is fitted with the Dirichlet form in either case (a positive semi-definite sample
matrix; the generator form's sample matrix is indefinite, and minimising it over a large
basis fits its noise: in d = 50 its held-out quotient came out 100 times too large), and the
fixed Ritz functions f_1..f_r are then evaluated on the held-out half with the chosen form:
a trial space from the data, a Rayleigh quotient of the model (first order in e, as above).

Sample estimate. The samples are shuffled and split in two halves (``fit_fraction``). The
basis coefficients are fitted on the first half (the in-sample Ritz values are biased low: the
minimisation also fits sampling noise). The fitted Ritz functions f_1..f_r are then fixed and
re-evaluated on the second half, where

- ``value`` is the Rayleigh quotient of f_1, R = mean(e_i) / var(f_1) with e_i = |grad f_1(x_i)|^2
  (``form="data"``) or -f_1(x_i) L f_1(x_i) (``form="model"``), an estimate of a true upper
  bound on lambda_1 (the quotient of a fixed function), with the delta-method standard error
  std_i(e_i - R (f_1(x_i) - mean f_1)^2) / (var(f_1) sqrt(n));
- ``ritz_values`` are the Ritz values of the held-out problem restricted to span(f_1..f_r),
  upper bounds on lambda_1..lambda_r with exact expectations, with bootstrap standard errors.

Bases, all in whitened coordinates z = Lambda^{-1/2} U^T (x - m) from the fit half's mean m and
covariance U Lambda U^T (so |grad_x f|^2 = sum_j (d f / d z_j)^2 / Lambda_j):

- ``"polynomial"``: products of normalised Hermite polynomials prod_j He_{n_j}(z_j) / sqrt(n_j!)
  of total degree 1..``degree``; C(d + degree, degree) - 1 functions (1325 in d = 50 at degree
  2). Degree 1 holds the exact eigenfunctions of a Gaussian p_t.
- ``"tanh"``: ridge functions tanh((u . z - c) / w) with directions u along ``RIDGE_AXES`` axes
  (the principal axes in d <= 3; above, the most non-Gaussian of the principal and the data's
  coordinate axes, since a degenerate principal subspace, identical wells, has arbitrary
  leading axes) and random unit vectors in their span, centres c
  evenly spaced over the central 99.8 % of the projected samples and ``N_RIDGE_WIDTHS`` widths
  w geometric from the narrowest the samples resolve (below; at least ``RIDGE_WIDTHS[0]``) to
  ``RIDGE_WIDTHS[1]`` (whitened units): they represent the step between two separated modes.
- ``"network"``: the linear (degree-1 Hermite) functions and the NETWORK_WIDTH features h(z)
  of the last hidden layer of a small tanh network f(z) = w . h(z), trained (Adam, seeded by
  ``generator``) to minimise the fit half's Rayleigh quotient mean |grad_x f|^2 / var f; the
  Ritz problem then recombines them. For eigenfunctions no fixed basis holds (curved or
  many-mode boundaries). The training sees only the fit half, so the held-out estimates stay
  honest; an over-fitted network only raises them.
- ``"poly+tanh"``: both. ``"auto"`` is ``"poly+tanh"`` with the degree and the number of
  features chosen from the dimension (degree 3 up to d = 5, 2 up to d = 60, then 1; 240 ridge
  features in 1D, 270 above) and capped so that the fit half holds at least
  2 ``SAMPLES_PER_FUNCTION`` samples per function of each part.

Ridge features only enter where the samples can see them: the narrowest width at a centre is
the distance to its ``MIN_TRANSITION_SAMPLES``-th nearest fit sample, since a step placed in an
empty gap between samples has zero sample Dirichlet energy and the minimisation would find it.

Ill-conditioning. The centred basis is scaled to unit variance (functions constant on the fit
half are dropped), B is diagonalised and eigen-directions with eigenvalue below ``rcond``
times the largest are discarded before the generalised problem is solved (default 1e-10:
round-off in A and B is then amplified at most 1 / rcond times, to about 1e-6 relative).

Basis error. The quotient is an upper bound only up to its basis: an incomplete basis gives a
value above lambda_1 that the standard error does not see (exact many-well-32 at t = 1: 0.946
+- 0.013 for the gap 0.919). The Ritz problem is therefore also solved on the basis's coarser
part (:meth:`~.ritz_basis.FeatureMap.coarse`: one polynomial degree less, or the leading half
of the principal axes at degree 1; the ridge axes and every other random ridge direction; half
the network's units), on the same fit half, and its f_1's held-out quotient is taken beside
f_1's: ``basis_error`` is their difference, the analogue of a grid's refinement change (at
least the coarse basis's own error where the fine one has converged, and with both noisy it
also carries their fitted noise).
A second bias is the fitted noise: the held-out quotient of f_1 exceeds the basis's Ritz value
with exact expectations by about as much as the in-sample Ritz value falls below it (a fit's
optimism: to first order in the noise the test excess and the training deficit are equal, as
sigma^2 (1 +- M / n) for least squares with M coefficients), so ``fit_bias`` =
max(value - fit_ritz_values[0], 0) / 2 (many-well-32 at t = 1: 0.049, where the in-sample
value was 0.849 and the held-out one 0.946 for the gap 0.919). Both enter ``error`` =
stderr + basis_error + fit_bias; a basis error above ``LARGE_RELATIVE_ERROR`` of the value
raises the flag ``basis``. A basis with no coarser part (the linear basis in 1D) has an unknown
basis error (NaN, flag ``basis_unknown``). The coarser basis thins the ridge directions, not
their centres: on four modes in 2D at t = 0.05 the poly+tanh value is 35 % above the gap, and
halving the centres moved it by 1 %, halving the random directions by 32 %. The difference
cannot see a slow mode that neither basis can represent. A polynomial basis stalls on a step
between modes (Mueller-Brown at t = 0.2: 0.127 and 0.120 at degrees 2 and 3 for the gap 0.0134,
a change of 0.007), so it is also probed with the ridge features of "auto"
(:func:`~.ritz_basis.step_probe`): each one's held-out quotient, plus ``PROBE_Z`` = 3 of its
standard errors, is an estimate of an upper bound on lambda_1 too, so the value lies at least
its excess over the lowest of them above the gap, and ``basis_error`` is at least that excess
(on Mueller-Brown 0.076: flagged).

Caveat. Where p_t has nearly separated modes, |grad f_1|^2 lives in the barrier, where few
samples fall: the estimate and its standard error then rest on a handful of samples and the
sample mean underestimates E_p |grad f_1|^2. The flag ``heavy_tail`` (largest single sample
above ``HEAVY_TAIL_SHARE`` of the Dirichlet sum) marks that case.

Model error (``form="model"``). The quotient is the model's, so a wrong model moves it. For a
:class:`~scorehamiltonian.score.ensemble.ScoreEnsemble` the held-out quotient of f_1 is taken
again with each member's drift in place of the mean's (one score evaluation per member), and
``model_error`` is the standard deviation of those K values: the spread of the members'
quotients, first order in their differences. The members share their data's and training's bias,
which the spread cannot see (many-well-32 at t = 0.2: 0.213 with a spread of 0.004 for the gap
0.247), so the data anchor it: the Dirichlet form of the same f_1 on the same held-out samples,
``data_value``, is the data's quotient, and their difference mean(e_model - e_data) / var f_1
is -E_q[f_1 grad f_1 . e] (above), the model's first-order departure from the data's gap, with
the paired standard error se_d of the per-sample terms. ``model_error`` is the larger of the
spread and |value - data_value| + 2 se_d (95 % of the pair's noise, as for the states' sample
count); it is flagged ``model_data`` above ``LARGE_RELATIVE_ERROR`` of the value when the data
term is the larger. A single learned model cannot know its error:
``model_error`` is NaN and the flag ``model_unknown`` is raised; ``model_error`` above
``LARGE_RELATIVE_ERROR`` of the value raises ``model_spread``. The data form and analytic
scores have no model error (0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from ..common.errors import InputShapeError
from ..common.validation import as_float_tensor, nonfinite_rows
from ..score.ensemble import ScoreEnsemble
from ..score.interface import DensityScore, as_score
from .ritz_basis import SAMPLES_PER_FUNCTION, BasisName, FeatureMap, basis_name, feature_map, step_probe

__all__ = ["RitzResult", "ritz_gap"]

RitzForm = Literal["auto", "model", "data"]
#: The score at the samples, (n, d) -> (n, d), whose generator defines A in the "model" form.
Drift = Callable[[torch.Tensor], torch.Tensor]

#: Eigenvalues of the (unit-diagonal) covariance B below rcond times its largest are discarded.
DEFAULT_RCOND = 1e-10
#: Relative standard error above which the result is flagged.
LARGE_RELATIVE_ERROR = 0.1
#: Share of the held-out Dirichlet sum carried by one sample above which the result is flagged.
HEAVY_TAIL_SHARE = 0.05
#: Largest basis accepted (B and A are dense m x m matrices).
MAX_BASIS_SIZE = 5000
#: Bootstrap resamples for the standard errors of the held-out Ritz values.
N_BOOTSTRAP = 200
#: Standard errors a probe function's quotient must lie below the value to count (module docstring).
PROBE_Z = 3.0


@dataclass(frozen=True)
class RitzResult:
    """Sample estimate of Rayleigh-Ritz upper bounds on the Score Hamiltonian's spectrum at t.

    All eigenvalues are in units of 1 / x^2 (x in the process's units).

    value : held-out Rayleigh quotient E|grad f_1|^2 / Var f_1 of the first fitted Ritz
        function: an estimate of an upper bound on lambda_1(t).
    stderr : its delta-method standard error.
    ritz_values : (r,) ascending held-out Ritz values on span(f_1..f_r), estimates of upper
        bounds on lambda_1..lambda_r (ritz_values[0] <= value).
    ritz_stderr : (r,) their bootstrap standard errors.
    fit_ritz_values : (r,) in-sample Ritz values of the fit half (biased low; a diagnostic).
    n_samples, n_fit, n_eval : samples used in all, in the fit half and in the held-out half.
    basis : the basis name ("polynomial", "tanh", "poly+tanh" or "network").
    basis_size : number of basis functions m; basis_rank : directions kept after the cut of B.
    dim : dimension d; t : the diffusion time.
    flags : names of the conditions met among "small_basis" ("auto" had to drop ridge
        features of its default count for want of samples: a many-well-32 report with 4000
        samples read 0.58 for the gap 0.30, raising no other flag), "large_error" (stderr >
        LARGE_RELATIVE_ERROR value), "basis" (basis_error > LARGE_RELATIVE_ERROR value),
        "basis_unknown" (no coarser basis: basis_error NaN), "few_samples" (n_fit <
        SAMPLES_PER_FUNCTION basis_size), "heavy_tail" (one held-out sample carries > HEAVY_TAIL_SHARE of the Dirichlet sum: value and
        stderr then rest on a few samples) and "overfit" (value - ritz_values[0] > 3 stderr:
        f_1 carries fitted noise), and in the model form "model_unknown" (a single learned
        model: no model error can be estimated), "model_spread" (the members' spread >
        LARGE_RELATIVE_ERROR value) and "model_data" (the data anchor above it and above the
        spread). Each is also issued as a RuntimeWarning.
    form : "model" (the score's generator) or "data" (the samples' Dirichlet form).
    model_error : for an ensemble the larger of the members' spread of the quotient of f_1 and
        the data anchor |value - data_value| + 2 se_d (module docstring); 0 for the data form
        and analytic scores, NaN for a single learned model. data_value : the Dirichlet
        form's quotient of f_1 on the same samples (an ensemble's model form; NaN otherwise).
    basis_error : |value - value on the coarser basis|, for a polynomial basis at least the step
        probe's excess (module docstring, "Basis error"); NaN where the basis has no coarser part. fit_bias : (value - fit_ritz_values[0]) / 2, at
        least 0: the fitted noise's excess of the held-out quotient (module docstring).
        ``error`` = stderr + basis_error + fit_bias is the numerical error, ``total_error`` =
        error + model_error the whole interval's half-width.
    features, coefficients, offsets : the fitted functions (used by :meth:`eigenfunction`).
    """

    value: float
    stderr: float
    ritz_values: torch.Tensor
    ritz_stderr: torch.Tensor
    fit_ritz_values: torch.Tensor
    n_samples: int
    n_fit: int
    n_eval: int
    basis: str
    basis_size: int
    basis_rank: int
    dim: int
    t: float
    flags: tuple[str, ...]
    form: str
    features: FeatureMap = field(repr=False, compare=False)
    coefficients: torch.Tensor = field(repr=False, compare=False)
    offsets: torch.Tensor = field(repr=False, compare=False)
    model_error: float = 0.0
    basis_error: float = 0.0
    fit_bias: float = 0.0
    data_value: float = math.nan

    @property
    def reliable(self) -> bool:
        """True when no flag is raised."""
        return not self.flags

    @property
    def error(self) -> float:
        """stderr + basis_error + fit_bias: the numerical error of ``value`` (units 1 / x^2)."""
        return self.stderr + self.basis_error + self.fit_bias

    @property
    def total_error(self) -> float:
        """error + model_error: the whole interval's half-width (NaN for a single learned model)."""
        return self.error + self.model_error

    def eigenfunction(self, x: Any, k: int = 0) -> torch.Tensor:
        """The k-th fitted Ritz function f_{k+1} at x (..., d), shape (...,).

        Normalised to mean 0 and variance 1 on the held-out samples; the sign makes f_1
        increase on average along the leading principal axis of the fit samples.
        """
        x = self.features.check(x)
        flat = x.reshape(-1, self.dim)
        values = self.features.values(flat) @ self.coefficients[:, k] - self.offsets[k]
        return values.reshape(x.shape[:-1])

    def eigenfunction_gradient(self, x: Any, k: int = 0) -> torch.Tensor:
        """grad_x of the k-th Ritz function at x (..., d), shape (..., d) (units 1 / x)."""
        x = self.features.check(x)
        flat = x.reshape(-1, self.dim)
        grads = self.features.gradients(flat, self.coefficients[:, k : k + 1])[:, 0]
        return grads.reshape(x.shape)


def ritz_gap(
    score: Any,
    t: float,
    samples: Any = None,
    n_samples: int = 20000,
    basis: BasisName = "auto",
    degree: int | None = None,
    n_features: int | None = None,
    n_eigenvalues: int = 4,
    fit_fraction: float = 0.5,
    rcond: float = DEFAULT_RCOND,
    generator: torch.Generator | None = None,
    form: RitzForm = "auto",
) -> RitzResult:
    """Sample-based Rayleigh-Ritz estimate of upper bounds on lambda_1(t) (and lambda_2..).

    lambda_1 = inf_f E_{p_t}|grad f|^2 / Var_{p_t} f over the span of a basis, solved as the
    generalised eigenproblem A c = theta B c (module docstring), in units of 1 / x^2.

    score : a :class:`Score` or a callable (wrapped by :func:`as_score`); it fixes the time
        range and dimension. Without ``samples`` it must be an :class:`ExactScore`, whose
        marginal p_t is sampled exactly (``n_samples`` draws with ``generator``). A learned
        score does not sample itself here: Langevin dynamics driven by it cannot cross the
        barriers that make the gap small, so its samples would miss modes and give a
        silently wrong, too large gap; pass samples of p_t instead (e.g. data noised to t,
        alpha_t x0 + sigma_t z, or the model's own reverse-time sampler stopped at t), or
        :class:`SamplesRequiredError` is raised.
    samples : (n, d) samples of p_t (any order: they are shuffled before the split);
        ``n_samples`` is then unused.
    basis, degree, n_features : the basis (module docstring); ``degree`` is the total degree
        of the polynomial part, ``n_features`` the number of tanh ridge features.
    n_eigenvalues : how many Ritz values r to report.
    fit_fraction : share of the samples used to fit the coefficients; the rest evaluates.
    rcond : relative cut of B's eigenvalues (after scaling to unit variances).
    generator : torch.Generator for the sampling, the shuffle, the random ridge directions
        and the bootstrap (seeded: the result is reproducible).
    form : "model": the quadratic form of the score's own generator,
        -E[f (Laplacian f + s_t . grad f)] (module docstring), so that the result is the
        model's and changes when the score does; "data": the Dirichlet form E|grad f|^2 of the
        samples alone (no score evaluation: the gap of the samples' law); "auto" (default):
        "data" for a score with an exact log-density (a :class:`DensityScore`, for which the two
        agree in expectation; the Dirichlet form is the lower-variance one, except for exact
        eigenfunctions), "model" for any other score.
    """
    score = as_score(score)
    t = float(score.process.time(float(t)))
    if form not in ("auto", "model", "data"):
        raise ValueError(f"form must be 'auto', 'model' or 'data'; got {form!r}")
    if form == "auto":
        form = "data" if isinstance(score, DensityScore) else "model"
    x = _samples(score, t, samples, n_samples, generator)
    n_fit = _split_size(x.shape[0], fit_fraction)
    order = _permutation(x.shape[0], x, generator)
    x_fit, x_eval = x[order[:n_fit]], x[order[n_fit:]]
    features = feature_map(x_fit, basis, degree, n_features, generator)
    if features.size > MAX_BASIS_SIZE:
        raise ValueError(f"the basis has {features.size} functions, above MAX_BASIS_SIZE = "
                         f"{MAX_BASIS_SIZE}; lower degree or n_features")
    if n_fit < features.size + 2:
        raise InputShapeError(
            f"too few samples: the fit half holds {n_fit} samples for {features.size} basis "
            f"functions; pass at least {2 * (features.size + 2)} samples (recommended "
            f"{2 * SAMPLES_PER_FUNCTION * features.size})"
        )
    if int(n_eigenvalues) < 1:
        raise ValueError(f"n_eigenvalues must be at least 1; got {n_eigenvalues!r}")
    drift = members = None
    if form == "model":
        drift = _drift(score, t)
        if score.learned:
            members = [_drift(m, t) for m in score.members] if isinstance(score, ScoreEnsemble) else []
    fit, coarse = _fit(features, x_fit, int(n_eigenvalues), rcond)
    probe = step_probe(features, x_fit, generator) if basis == "polynomial" else None
    return _evaluate(features, x_eval, fit, coarse, x.shape[1], t, basis_name(basis), n_fit, generator, drift,
                     members, probe)


def _drift(score: Any, t: float) -> Drift:
    return lambda points: score(points, t).detach()


def _samples(score: Any, t: float, samples: Any, n_samples: int, generator) -> torch.Tensor:
    """The user's samples, checked, or draws of :meth:`Score.sample` (exact, or the attached data)."""
    if samples is None:
        return score.sample(int(n_samples), t, generator)
    x = as_float_tensor(samples, "samples")
    if x.ndim != 2 or (score.dim is not None and x.shape[1] != score.dim):
        want = f"(n, {score.dim})" if score.dim is not None else "(n, d)"
        raise InputShapeError(f"samples must have shape {want}; got {tuple(x.shape)}")
    problem = nonfinite_rows(x)
    if problem:
        raise InputShapeError(f"samples contain {problem}")
    return x


def _split_size(n: int, fit_fraction: float) -> int:
    """Size of the fit half; both halves must hold at least 8 samples."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must lie in (0, 1); got {fit_fraction!r}")
    n_fit = round(n * fit_fraction)
    if min(n_fit, n - n_fit) < 8:
        raise InputShapeError(f"too few samples ({n}): each half needs at least 8")
    return n_fit


def _permutation(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randperm(n, generator=generator, device=device).to(like.device)


class _Fit(NamedTuple):
    """Coefficients (m, r) of the r lowest Ritz functions, their in-sample Ritz values, rank kept."""

    coefficients: torch.Tensor
    ritz_values: torch.Tensor
    rank: int


def _fit(features: FeatureMap, x: torch.Tensor, r: int, rcond: float) -> tuple[_Fit, _Fit | None]:
    """Solve A c = theta B c on x (A the Dirichlet Gram matrix) after unit-variance scaling and
    the rcond cut of B, over the whole basis and over its coarser part (None where the basis has
    none: every column kept)."""
    phi = features.values(x)
    phi = phi - phi.mean(0)
    cov = phi.T @ phi / x.shape[0]
    gram = features.dirichlet_gram(x)
    scale = cov.diagonal().sqrt()
    live = scale > 1e-12 * scale.max()
    coarse = features.coarse()
    fine = _solve(cov, gram, scale, live, r, rcond)
    return fine, None if bool(coarse.all()) else _solve(cov, gram, scale, live & coarse, 1, rcond)


def _solve(cov: torch.Tensor, gram: torch.Tensor, scale: torch.Tensor, live: torch.Tensor, r: int,
           rcond: float) -> _Fit:
    """The r lowest Ritz pairs of (gram, cov) restricted to the ``live`` columns."""
    transform = _whitener(cov[live][:, live] / torch.outer(scale[live], scale[live]), rcond)
    transform = transform / scale[live, None]
    reduced = transform.T @ gram[live][:, live] @ transform
    thetas, vectors = torch.linalg.eigh(0.5 * (reduced + reduced.T))
    r = min(r, thetas.numel())
    coefficients = cov.new_zeros(cov.shape[0], r)
    coefficients[live] = transform @ vectors[:, :r]
    return _Fit(coefficients, thetas[:r], transform.shape[1])


def _whitener(cov: torch.Tensor, rcond: float) -> torch.Tensor:
    """T with T^T cov T = I on the eigen-directions of cov above rcond times its largest."""
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > rcond * evals[-1]
    return evecs[:, keep] / evals[keep].sqrt()


def _normalisation(raw: torch.Tensor, lead: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets and scales making (raw - offset) * scale mean 0, variance 1, Cov with lead >= 0."""
    offsets = raw.mean(0)
    centred = raw - offsets
    sign = torch.where((centred * lead[:, None]).mean(0) < 0, -1.0, 1.0).to(raw.dtype)
    return offsets, sign / centred.std(0, correction=0)


def _quotients(energy: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R = mean(energy) / mean(f^2) along the samples (dim 0) of centred f, (n,) or (n, m), and
    its delta-method standard error."""
    variance = (f**2).mean(0)
    value = energy.mean(0) / variance
    terms = energy - value * f**2
    return value, terms.std(0, correction=1) / (variance * math.sqrt(f.shape[0]))


def _quotient(energy: torch.Tensor, f: torch.Tensor) -> tuple[float, float]:
    """:func:`_quotients` of one function, as floats."""
    value, stderr = _quotients(energy, f)
    return float(value), float(stderr)


def _subspace_ritz(outer: torch.Tensor, f: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ascending Ritz values on span(f) for each row of sample weights (b, n) (rows sum to n).

    outer (n, r, r) holds the per-sample terms of A (grad f_a . grad f_b, or the symmetrised
    -f_a L f_b); returns (b, r).
    """
    n, r = f.shape
    gram = (weights @ outer.reshape(n, r * r)).reshape(-1, r, r) / n
    mean = weights @ f / n
    second = (weights @ (f[:, :, None] * f[:, None, :]).reshape(n, r * r)).reshape(-1, r, r) / n
    chol = torch.linalg.cholesky(second - mean[:, :, None] * mean[:, None, :])
    left = torch.linalg.solve_triangular(chol, gram, upper=False)
    reduced = torch.linalg.solve_triangular(chol, left.transpose(-1, -2), upper=False)
    return torch.linalg.eigvalsh(0.5 * (reduced + reduced.transpose(-1, -2)))


def _heldout_ritz(outer: torch.Tensor, f: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values on span(f_1..f_r) from the held-out samples and their bootstrap errors.

    outer (n, r, r) are the per-sample terms of A; f (n, r) the function values.
    """
    n = f.shape[0]
    values = _subspace_ritz(outer, f, torch.ones(1, n, dtype=f.dtype, device=f.device))[0]
    device = generator.device if generator is not None else f.device
    draws = torch.randint(0, n, (N_BOOTSTRAP, n), generator=generator, device=device).to(f.device)
    weights = torch.zeros(N_BOOTSTRAP, n, dtype=f.dtype, device=f.device)
    weights.scatter_add_(1, draws, torch.ones_like(weights))
    return values, _subspace_ritz(outer, f, weights).std(0, correction=1)


def _flags(value: float, stderr: float, first_ritz: float, n_fit: int, size: int, share: float,
           spread: float, anchor: float, shortfall: int, basis_error: float) -> tuple[str, ...]:
    """The names of the reliability conditions met, each also issued as a RuntimeWarning."""
    checks = {
        "small_basis": (shortfall > 0,
                        (f"the samples pay for {shortfall} fewer ridge features than the default basis: too few "
                         "steps to place one at a barrier, so the bound may lie far above the gap; pass more "
                         "samples")),
        "basis_unknown": (math.isnan(basis_error),
                          ("the basis has no coarser part (a linear basis in 1D), so its error cannot be "
                           "estimated; use basis='auto'")),
        "basis": (basis_error > LARGE_RELATIVE_ERROR * value,
                  (f"the value moves by {basis_error:.3g} on the coarser basis: the basis is far from "
                   "complete; pass more samples or use basis='network'")),
        "large_error": (stderr > LARGE_RELATIVE_ERROR * value,
                        f"standard error {stderr:.3g} exceeds {LARGE_RELATIVE_ERROR} of the value {value:.3g}"),
        "few_samples": (n_fit < SAMPLES_PER_FUNCTION * size,
                        (f"{n_fit} fit samples for {size} basis functions (fewer than "
                         f"{SAMPLES_PER_FUNCTION} each): the fitted function overfits and the bound is loose")),
        "heavy_tail": (share > HEAVY_TAIL_SHARE,
                       (f"one held-out sample carries {share:.0%} of the Dirichlet sum: the gradient "
                        "lives where p_t is barely sampled, so the value is likely too low and its error "
                        "unreliable")),
        "overfit": (value - first_ritz > 3.0 * stderr,
                    (f"the held-out quotient of f_1 ({value:.3g}) drops to {first_ritz:.3g} on mixing in "
                     "the other Ritz functions: the fit overfits the fit half; use more samples or a "
                     "smaller basis")),
        "model_unknown": (math.isnan(spread),
                          ("a single learned model cannot know its own error; train an ensemble "
                           "(train_ensemble, or scorehamiltonian train --ensemble K) for a model error")),
        "model_spread": (spread > LARGE_RELATIVE_ERROR * value,
                         f"the ensemble's members disagree: model error {spread:.3g} on the value {value:.3g}"),
        "model_data": (anchor > max(spread, LARGE_RELATIVE_ERROR * value),
                       (f"the model's quotient of f_1 and the data's (its Dirichlet form) differ by more than "
                        f"the members do, or their difference is too noisy to say: model error {anchor:.3g} on "
                        f"the value {value:.3g}")),
    }
    raised = tuple(name for name, (hit, _) in checks.items() if hit)
    for name in raised:
        warnings.warn(f"ritz_gap: {checks[name][1]}", RuntimeWarning, stacklevel=4)
    return raised


def _evaluate(features: FeatureMap, x: torch.Tensor, fit: _Fit, coarse: _Fit | None, dim: int, t: float,
              basis: str, n_fit: int, generator: torch.Generator | None, drift: Drift | None,
              members: list[Drift] | None, probe: FeatureMap | None) -> RitzResult:
    """Fix the fitted functions (and the coarser basis's f_1), normalise them on the held-out x
    and estimate their quotients; ``members`` are an ensemble's drifts for the model error ([]
    for a single learned model, None when there is none); ``probe`` the step probe of a
    polynomial basis (module docstring, "Basis error"; None for the others)."""
    r = fit.coefficients.shape[1]
    both = fit.coefficients if coarse is None else torch.cat([fit.coefficients, coarse.coefficients], dim=1)
    raw = features.values(x) @ both
    offsets, scale = _normalisation(raw, features.whitening(x)[:, 0])
    f = (raw - offsets) * scale
    score = None if drift is None else drift(x)
    if score is None:
        grads = features.z_gradients(x, both) * scale[:, None] / features.whitening.variances.sqrt()
        outer = grads @ grads.transpose(1, 2)
    else:
        applied = features.generator(x, score) @ both * scale
        outer = -0.5 * (f[:, :, None] * applied[:, None, :] + applied[:, :, None] * f[:, None, :])
    energy = outer[:, 0, 0]
    value, stderr = _quotient(energy, f[:, 0])
    basis_error = math.nan if coarse is None else abs(value - _quotient(outer[:, r, r], f[:, r])[0])
    if probe is not None and not math.isnan(basis_error):
        basis_error = max(basis_error, value - _lowest_probe_quotient(probe, x, score))
    fit_bias = max(value - float(fit.ritz_values[0]), 0.0) / 2
    f, outer, offsets, scale = f[:, :r], outer[:, :r, :r], offsets[:r], scale[:r]
    ritz, ritz_err = _heldout_ritz(outer, f, generator)
    share = float(energy.abs().max() / energy.abs().sum())
    spread = 0.0 if members is None else _member_spread(features, x, fit, scale, f[:, 0], members)
    data_value, anchor = math.nan, 0.0
    if members:
        grad = features.z_gradients(x, fit.coefficients[:, :1])[:, 0] * scale[0] / features.whitening.variances.sqrt()
        data_energy = (grad**2).sum(1)
        data_value = _quotient(data_energy, f[:, 0])[0]
        departure, departure_stderr = _quotient(energy - data_energy, f[:, 0])
        anchor = abs(departure) + 2 * departure_stderr
    flags = _flags(value, stderr, float(ritz[0]), n_fit, features.size, share, spread, anchor, features.shortfall,
                   basis_error)
    return RitzResult(
        value=value, stderr=stderr, ritz_values=ritz, ritz_stderr=ritz_err,
        fit_ritz_values=fit.ritz_values, n_samples=n_fit + x.shape[0], n_fit=n_fit, n_eval=x.shape[0],
        basis=basis, basis_size=features.size, basis_rank=fit.rank, dim=dim, t=t, flags=flags,
        form="data" if drift is None else "model",
        features=features, coefficients=fit.coefficients * scale, offsets=offsets * scale,
        model_error=max(spread, anchor), basis_error=basis_error, fit_bias=fit_bias, data_value=data_value,
    )


def _lowest_probe_quotient(probe: FeatureMap, x: torch.Tensor, score: torch.Tensor | None) -> float:
    """min over the probe's functions phi_k of their held-out quotient plus PROBE_Z standard errors
    (each an estimate of an upper bound on lambda_1, in the data form, or in the model form with
    the drift ``score`` at x)."""
    phi = probe.values(x)
    centred = phi - phi.mean(0)
    if score is None:
        energy = torch.zeros_like(phi)
        for j, (cols, part) in enumerate(probe.partials(x)):
            energy[:, cols] += part**2 / probe.whitening.variances[j]
    else:
        energy = -centred * probe.generator(x, score)
    quotients, stderr = _quotients(energy, centred)
    return float((quotients + PROBE_Z * stderr).min())


def _member_spread(features: FeatureMap, x: torch.Tensor, fit: _Fit, scale: torch.Tensor, f: torch.Tensor,
                   members: list[Drift]) -> float:
    """Standard deviation over the members of the held-out quotient -mean(f_1 L_k f_1) / var f_1
    with L_k the generator of member k's drift; NaN without members."""
    if not members:
        return math.nan
    quotients = [_quotient(-f * (features.generator(x, member(x)) @ fit.coefficients[:, 0]) * scale[0], f)[0]
                 for member in members]
    return float(torch.tensor(quotients, dtype=torch.float64).std(correction=1))
