"""Judges of a sampler's output in high dimension, from samples, each with its Monte Carlo standard error.

Where no grid exists (d > 2) a solver's law q is known only through its samples x (n, d); the
target p through exact samples y (m, d), its log-density, or its basins. Each judge returns a
:class:`SampleDistance` (value, standard error, sample sizes). Issue 22 item 4; THEORY
section 3 (the errors a step schedule is judged by).

- :func:`sliced_wasserstein`: SW_1(q, p) = E_theta W_1(theta.q, theta.p), theta uniform on the
  sphere, W_1 of two 1D empirical laws of equal size = mean |sort(theta.x) - sort(theta.y)|.
  Estimated as the mean over ``n_batches`` disjoint batches, each with its own ``n_projections``
  directions; standard error std / sqrt(B) over the batches (projection and sampling noise both).
  Empirical Wasserstein is biased upwards: two samples of the same law give a floor of order
  (n / B)^(-1/2) per slice, which :func:`sliced_wasserstein` of two exact samples measures.
- :func:`mmd`: the unbiased U-statistic of MMD^2 with the Gaussian kernel
  k(a, b) = exp(-|a - b|^2 / (2 h^2)) (Gretton et al. 2012), h the median pairwise distance of
  the pooled samples unless given; per batch, mean and std / sqrt(B) over batches. Unbiased:
  zero in expectation for q = p (it may then be negative).
- :func:`cross_entropy_gap`: E_q[-log p] - E_p[-log p] (nats) from log p at the samples of q and
  of p (= KL(q || p) + H(q) - H(p)); standard error sqrt(var_q / n + var_p / m). Each side is an
  :func:`expected_energy`; the floor E_p[-log p] can be computed once from many exact samples.
- :func:`basin_weight_error`: 1/2 sum_k |q_k - w_k|, q_k the fraction of samples in basin k (a
  function x -> basin index), w_k the exact basin weights; delta-method standard error
  1/2 sqrt(s^T (diag(q) - q q^T) s / n), s = sign(q - w).
- :class:`ClassifierJudge` (:func:`fit_classifier_judge`), for labelled data with no density (the
  digits): a scikit-learn MLP classifier fitted on the training rows judges samples against the
  held-out rows. ``class_tv``: 1/2 sum_c |q_c - p_c| of the classes it assigns to the samples and to
  the held-out rows (one instrument on both sides, so its own mistakes cancel to first order),
  with the delta-method error of both samples. ``frechet``: the Frechet distance
  |mu_q - mu_p|^2 + tr(S_q + S_p - 2 (S_q S_p)^(1/2)) between Gaussian fits of its hidden-layer
  features (FID's formula in this classifier's feature space), standard error from bootstrap
  resamples of both samples; it is biased upwards at finite samples, and ``floor`` gives its value
  for training rows, samples of the data law itself. ``frechet_difference``: that of two paired
  samples (one set of prior draws through two schedules), with common resamples, so that the
  held-out rows' shared noise cancels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ..common.errors import InputShapeError
from ..common.statistics import mean_and_stderr

__all__ = ["ClassifierJudge", "SampleDistance", "basin_weight_error", "cross_entropy_gap", "expected_energy",
           "fit_classifier_judge", "mmd", "sliced_wasserstein"]


@dataclass(frozen=True)
class SampleDistance:
    """A sample estimate: ``value`` and its Monte Carlo standard ``error``; ``n``, ``m``: the samples of
    q and p used; ``name``: what was estimated; ``parts``: per-basin errors for :func:`basin_weight_error`."""

    name: str
    value: float
    error: float
    n: int
    m: int
    parts: tuple[float, ...] = ()


def _samples(x: Any, name: str, dim: int | None = None) -> torch.Tensor:
    out = torch.as_tensor(x, dtype=torch.float64)
    if out.ndim != 2 or out.shape[0] < 2 or (dim is not None and out.shape[1] != dim):
        want = f"(n >= 2, {dim})" if dim is not None else "(n >= 2, d)"
        raise InputShapeError(f"{name} must have shape {want}; got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise InputShapeError(f"{name} has NaN or infinite entries")
    return out


def _batches(n: int, n_batches: int) -> int:
    if int(n_batches) != n_batches or n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2; got {n_batches!r}")
    if n // int(n_batches) < 2:
        raise InputShapeError(f"{n} samples do not fill {n_batches} batches of at least 2")
    return n // int(n_batches)


def sliced_wasserstein(x: Any, y: Any, *, n_projections: int = 128, n_batches: int = 10, seed: int = 0
                       ) -> SampleDistance:
    """SW_1 between the laws of samples ``x`` (n, d) and ``y`` (m, d) (module docstring); the first
    min(n, m) // B * B rows of each, in order, make the batches."""
    x = _samples(x, "x")
    y = _samples(y, "y", x.shape[1])
    size = _batches(min(x.shape[0], y.shape[0]), n_batches)
    generator = torch.Generator().manual_seed(int(seed))
    values = []
    for b in range(int(n_batches)):
        theta = torch.randn(x.shape[1], int(n_projections), generator=generator, dtype=torch.float64)
        theta = theta / theta.norm(dim=0, keepdim=True)
        px = torch.sort(x[b * size:(b + 1) * size] @ theta, dim=0).values
        py = torch.sort(y[b * size:(b + 1) * size] @ theta, dim=0).values
        values.append(float((px - py).abs().mean()))
    value, error = mean_and_stderr(values)
    return SampleDistance("sliced W1", value, error, size * int(n_batches), size * int(n_batches))


def _median_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    pooled = torch.cat([x[:1000], y[:1000]])
    distances = torch.cdist(pooled, pooled)
    return float(distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)].median())


def mmd(x: Any, y: Any, *, bandwidth: float | None = None, n_batches: int = 10) -> SampleDistance:
    """Unbiased MMD^2 with a Gaussian kernel between samples ``x`` (n, d) and ``y`` (m, d) (module
    docstring); ``bandwidth`` h, default the median pairwise distance of (up to 2000) pooled samples."""
    x = _samples(x, "x")
    y = _samples(y, "y", x.shape[1])
    h = _median_distance(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive; got {h!r}")
    nx, ny = _batches(x.shape[0], n_batches), _batches(y.shape[0], n_batches)
    values = []
    for b in range(int(n_batches)):
        xb, yb = x[b * nx:(b + 1) * nx], y[b * ny:(b + 1) * ny]
        kxx = torch.exp(-torch.cdist(xb, xb) ** 2 / (2 * h * h))
        kyy = torch.exp(-torch.cdist(yb, yb) ** 2 / (2 * h * h))
        kxy = torch.exp(-torch.cdist(xb, yb) ** 2 / (2 * h * h))
        values.append(float((kxx.sum() - kxx.diagonal().sum()) / (nx * (nx - 1))
                            + (kyy.sum() - kyy.diagonal().sum()) / (ny * (ny - 1)) - 2 * kxy.mean()))
    value, error = mean_and_stderr(values)
    return SampleDistance(f"MMD^2 (h = {h:.4g})", value, error, nx * int(n_batches), ny * int(n_batches))


def expected_energy(x: Any, log_prob: Callable[[torch.Tensor], torch.Tensor]) -> SampleDistance:
    """E[-log p] in nats over samples ``x`` (n, d), with its standard error std / sqrt(n); ``log_prob`` =
    log p, up to a constant. Of exact samples of p, computed once, it is the floor that
    :func:`cross_entropy_gap` subtracts."""
    x = _samples(x, "x")
    with torch.no_grad():
        values = -log_prob(x).double().reshape(-1)
    if values.shape[0] != x.shape[0]:
        raise InputShapeError("log_prob must return one value per sample")
    if not bool(torch.isfinite(values).all()):
        raise InputShapeError("log_prob is not finite at every sample: E[-log p] is infinite or undefined")
    value, error = mean_and_stderr(values)
    return SampleDistance("E[-log p]", value, error, x.shape[0], 0)


def cross_entropy_gap(x: Any, y: Any, log_prob: Callable[[torch.Tensor], torch.Tensor]) -> SampleDistance:
    """E_q[-log p] - E_p[-log p] in nats from samples ``x`` of q and ``log_prob`` = log p (up to a
    constant, which cancels); module docstring. ``y``: samples (m, d) of p, or their
    :func:`expected_energy` (computed once from many exact samples and reused by every judgement)."""
    x = _samples(x, "x")
    if isinstance(y, SampleDistance) and y.name != "E[-log p]":
        raise ValueError(f"y must be samples of p or their expected_energy; got the SampleDistance {y.name!r}")
    on_q = expected_energy(x, log_prob)
    on_p = y if isinstance(y, SampleDistance) else expected_energy(_samples(y, "y", x.shape[1]), log_prob)
    return SampleDistance("E_q[-log p] - E_p[-log p]", on_q.value - on_p.value, math.hypot(on_q.error, on_p.error),
                          on_q.n, on_p.n)


def basin_weight_error(x: Any, basin: Callable[[torch.Tensor], Any], weights: Any) -> SampleDistance:
    """1/2 sum_k |q_k - w_k| between the basin fractions of samples ``x`` (``basin(x)``: an index in
    0 .. K-1 per sample) and the exact basin weights ``weights`` (K,); module docstring. ``parts``:
    q_k - w_k per basin."""
    x = _samples(x, "x")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size < 2 or (w < 0).any() or abs(w.sum() - 1) > 1e-8:
        raise ValueError(f"weights must be K >= 2 non-negative numbers summing to 1; got {w.tolist()}")
    labels = np.asarray(torch.as_tensor(basin(x)).reshape(-1).cpu(), dtype=np.int64)
    if labels.size != x.shape[0] or labels.min() < 0 or labels.max() >= w.size:
        raise InputShapeError(f"basin must give one index in 0 .. {w.size - 1} per sample")
    q = np.bincount(labels, minlength=w.size) / labels.size
    return SampleDistance("basin-weight TV", 0.5 * float(np.abs(q - w).sum()), _tv_error(q, w, labels.size, 0),
                          labels.size, 0, tuple((q - w).tolist()))


def _tv_error(q: np.ndarray, p: np.ndarray, n: int, m: int) -> float:
    """Delta-method standard error of 1/2 sum |q - p| for class fractions q of n samples and p of m
    (m = 0: p exact): 1/2 sqrt(s^T C_q s / n + s^T C_p s / m), C = diag(f) - f f^T, s = sign(q - p)."""
    sign = np.sign(q - p)
    variance = sum(float(sign @ (np.diag(f) - np.outer(f, f)) @ sign) / size for f, size in ((q, n), (p, m)) if size)
    return 0.5 * math.sqrt(max(variance, 0.0))


@dataclass(frozen=True)
class ClassifierJudge:
    """Held-out judges from a fitted scikit-learn ``MLPClassifier`` (module docstring): ``reference`` the
    held-out rows (m, d), ``train`` the training rows, ``accuracy`` the classifier's on the held-out
    rows (NaN without their labels)."""

    classifier: Any
    reference: torch.Tensor
    train: torch.Tensor
    accuracy: float

    def _classes(self, x: torch.Tensor) -> np.ndarray:
        n_classes = len(self.classifier.classes_)
        return np.bincount(self.classifier.predict(x.numpy()), minlength=n_classes) / x.shape[0]

    def _features(self, x: torch.Tensor) -> np.ndarray:
        return np.maximum(x.numpy() @ self.classifier.coefs_[0] + self.classifier.intercepts_[0], 0.0)

    def class_tv(self, x: Any) -> SampleDistance:
        """1/2 sum_c |q_c - p_c| between the class fractions the classifier assigns to ``x`` and to
        the held-out rows, with both samples' delta-method error."""
        x = _samples(x, "x", self.reference.shape[1])
        q, p = self._classes(x), self._classes(self.reference)
        return SampleDistance("classifier class TV", 0.5 * float(np.abs(q - p).sum()),
                              _tv_error(q, p, x.shape[0], self.reference.shape[0]), x.shape[0], self.reference.shape[0])

    def frechet(self, x: Any, *, n_bootstrap: int = 20, seed: int = 0) -> SampleDistance:
        """The Frechet distance between Gaussian fits of the hidden-layer features of ``x`` and of the
        held-out rows; standard error the std of ``n_bootstrap`` resamples of both."""
        x = _samples(x, "x", self.reference.shape[1])
        value, error = self._bootstrapped([x], lambda f, ref: _frechet(f[0], ref), n_bootstrap, seed)
        return SampleDistance("classifier-feature Frechet distance", value, error, x.shape[0], self.reference.shape[0])

    def frechet_difference(self, x: Any, other: Any, *, n_bootstrap: int = 20, seed: int = 0) -> SampleDistance:
        """:meth:`frechet` of ``x`` minus that of ``other``, rows paired by index (runs of one set of
        prior draws through two schedules): each bootstrap resample takes the same rows of both and
        the same held-out rows, so the noise the two share cancels in the standard error."""
        x = _samples(x, "x", self.reference.shape[1])
        other = _samples(other, "other", self.reference.shape[1])
        if other.shape[0] != x.shape[0]:
            raise InputShapeError(f"paired samples need equal sizes; got {x.shape[0]} and {other.shape[0]}")
        value, error = self._bootstrapped([x, other], lambda f, ref: _frechet(f[0], ref) - _frechet(f[1], ref),
                                          n_bootstrap, seed)
        return SampleDistance("difference of classifier-feature Frechet distances", value, error, x.shape[0],
                              self.reference.shape[0])

    def _bootstrapped(self, samples: list[torch.Tensor], statistic: Callable[[list[np.ndarray], np.ndarray], float],
                      n_bootstrap: int, seed: int) -> tuple[float, float]:
        """``statistic`` of the samples' features and the held-out rows' features, and its standard
        error: the std over ``n_bootstrap`` resamples (one row draw shared by all the samples)."""
        features, reference = [self._features(x) for x in samples], self._features(self.reference)
        rng = np.random.default_rng(int(seed))
        resampled = []
        for _ in range(int(n_bootstrap)):
            rows, held = rng.integers(0, len(features[0]), len(features[0])), rng.integers(0, len(reference), len(reference))
            resampled.append(statistic([f[rows] for f in features], reference[held]))
        return statistic(features, reference), float(np.std(resampled, ddof=1))

    def floor(self, n: int | None = None, **kwargs: Any) -> SampleDistance:
        """:meth:`frechet` of ``n`` training rows (default all): samples of the data law itself."""
        return self.frechet(self.train[: n or self.train.shape[0]], **kwargs)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mean = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(mean @ mean + np.trace(ca + cb - 2 * root))


def fit_classifier_judge(train: Any, labels: Any, held_out: Any, held_out_labels: Any = None, *,
                         hidden: int = 64, seed: int = 0) -> ClassifierJudge:
    """A :class:`ClassifierJudge`: ``MLPClassifier((hidden,), random_state=seed)`` fitted on ``train``
    (n, d) with integer ``labels``; ``held_out`` (m, d) is the reference, ``held_out_labels`` (if given)
    measure its accuracy."""
    from sklearn.neural_network import MLPClassifier

    train = _samples(train, "train")
    held_out = _samples(held_out, "held_out", train.shape[1])
    labels = np.asarray(labels).reshape(-1)
    if labels.size != train.shape[0]:
        raise InputShapeError(f"labels has {labels.size} entries for {train.shape[0]} training rows")
    classifier = MLPClassifier((int(hidden),), max_iter=1000, random_state=int(seed)).fit(train.numpy(), labels)
    accuracy = (float(classifier.score(held_out.numpy(), np.asarray(held_out_labels).reshape(-1)))
                if held_out_labels is not None else math.nan)
    return ClassifierJudge(classifier, held_out, train, accuracy)
