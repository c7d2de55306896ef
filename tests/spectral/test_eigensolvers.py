"""spectrum(): every method against dense eigh, known spectra, deflation, failures, counting."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scorehamiltonian.common.errors import ConvergenceError, InputDtypeError, ScoreHamiltonianError
from scorehamiltonian.spectral.eigensolvers import spectrum
from scorehamiltonian.spectral.preconditioners import fourier_preconditioner
from scorehamiltonian.spectral.solution import ConvergenceWarning, SpectrumResult, SymmetricOperator

ITERATIVE = [("lobpcg", "amg"), ("lobpcg", "fourier"), ("lobpcg", "jacobi"), ("lanczos", "auto")]
ALL_METHODS = [*ITERATIVE, ("eigsh", "auto"), ("eigsh-sa", "auto"), ("auto", "auto")]


@dataclass
class GridOperator:
    """-Laplacian_h (3-point, Dirichlet, per axis) + diag(V) on an n_1 x ... grid, C order."""

    n: tuple[int, ...]
    h: tuple[float, ...]
    V: torch.Tensor
    ground_state: torch.Tensor | None = None
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.grid = SimpleNamespace(n=self.n, h=self.h, dim=len(self.n))
        size = math.prod(self.n)
        self.shape = (size, size)
        self.columns = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.columns += 1 if v.ndim == 1 else v.shape[1]
        u = v.reshape(*self.n, -1).to(torch.float64)
        out = (self.V.reshape(*self.n, 1) + sum(2.0 / h**2 for h in self.h)) * u
        for axis, h in enumerate(self.h):
            m = self.n[axis] - 1
            out.narrow(axis, 1, m).sub_(u.narrow(axis, 0, m) / h**2)
            out.narrow(axis, 0, m).sub_(u.narrow(axis, 1, m) / h**2)
        return out.reshape(v.shape).to(self.dtype)

    def to_scipy(self) -> sp.csr_matrix:
        total = sp.diags(self.V.double().numpy())
        for axis, (m, h) in enumerate(zip(self.n, self.h)):
            band = sp.diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1]) / h**2
            left, right = sp.identity(math.prod(self.n[:axis])), sp.identity(math.prod(self.n[axis + 1 :]))
            total = total + sp.kron(sp.kron(left, band), right)
        return sp.csr_matrix(total)

    def diagonal(self) -> torch.Tensor:
        return (self.V + sum(2.0 / h**2 for h in self.h)).to(self.dtype)

    def spectral_bounds(self) -> tuple[float, float]:
        lap = sum(4.0 / h**2 for h in self.h)
        return float(self.V.min()), float(self.V.max()) + lap


@dataclass
class DiagonalOperator:
    """diag(values): the spectrum is known exactly."""

    values: torch.Tensor
    ground_state: torch.Tensor | None = None
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.shape = (self.values.numel(), self.values.numel())

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return (self.values if v.ndim == 1 else self.values[:, None]) * v

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix(sp.diags(self.values.numpy()))

    def diagonal(self) -> torch.Tensor:
        return self.values.clone()

    def spectral_bounds(self) -> tuple[float, float]:
        return float(self.values.min()), float(self.values.max())


def oscillator(n: int, variances: tuple[float, ...], width: float = 6.0, dtype=torch.float64) -> GridOperator:
    """H for p = N(0, diag(variances)): V = sum x^2 / (4 v^2) - 1 / (2 v); levels sum n_i / v_i."""
    axes, hs = [], []
    for v in variances:
        half = width * math.sqrt(v)
        h = 2 * half / (n + 1)
        axes.append(-half + h * torch.arange(1, n + 1, dtype=torch.float64))
        hs.append(h)
    mesh = torch.meshgrid(*axes, indexing="ij")
    V = sum(x**2 / (4 * v**2) - 1 / (2 * v) for x, v in zip(mesh, variances)).reshape(-1)
    psi = torch.exp(-sum(x**2 / (4 * v) for x, v in zip(mesh, variances))).reshape(-1)
    return GridOperator((n,) * len(variances), tuple(hs), V, psi / psi.norm(), dtype=dtype)


def double_well(n: int, centre: float, sigma: float = 0.3) -> GridOperator:
    """1D, p = (N(-centre, s^2) + N(centre, s^2)) / 2 in the ground-state form: V = psi'' / psi
    (discrete), so psi = sqrt(p) is the exact lowest eigenvector with eigenvalue 0."""
    half = centre + 7 * sigma
    h = 2 * half / (n + 1)
    x = -half + h * torch.arange(1, n + 1, dtype=torch.float64)
    log_p = torch.logaddexp(-((x - centre) ** 2), -((x + centre) ** 2)) / (2 * sigma**2)
    half_log = 0.5 * (log_p - log_p.max())
    pad = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), half_log, torch.tensor([-math.inf], dtype=torch.float64)])
    V = (torch.exp(pad[:-2] - half_log) + torch.exp(pad[2:] - half_log) - 2.0) / h**2
    psi = torch.exp(half_log)
    return GridOperator((n,), (h,), V, psi / psi.norm())


def dense_eigenvalues(H) -> np.ndarray:
    return np.linalg.eigvalsh(H.to_scipy().toarray())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_bounds_hold(result: SpectrumResult, exact: np.ndarray, slack: float = 1e-12) -> None:
    """|lambda_i - exact_i| <= eigenvalue_errors_i (+ the dense solver's own round-off)."""
    k = result.eigenvalues.numel()
    err = np.abs(result.eigenvalues.numpy() - exact[:k])
    assert (err <= result.eigenvalue_errors.numpy() + slack * max(1.0, np.abs(exact[:k]).max())).all(), (
        err, result.eigenvalue_errors
    )


# ---------------------------------------------------------------------------------------


def test_test_operators_satisfy_the_protocol():
    assert isinstance(oscillator(10, (0.5,)), SymmetricOperator)
    assert isinstance(DiagonalOperator(torch.arange(10.0, dtype=torch.float64)), SymmetricOperator)


@pytest.mark.parametrize(("method", "preconditioner"), ALL_METHODS)
def test_methods_match_dense_eigh_1d(method, preconditioner):
    H = oscillator(150, (0.5,))
    exact = dense_eigenvalues(H)
    result = spectrum(H, k=3, method=method, preconditioner=preconditioner, tol=1e-9, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, exact)
    scale = np.maximum(exact[:3] - exact[0], exact[1] - exact[0])
    assert (result.eigenvalue_errors.numpy() <= 1e-9 * scale).all()


@pytest.mark.parametrize(("method", "preconditioner"), ALL_METHODS)
def test_methods_match_dense_eigh_2d_with_degenerate_levels(method, preconditioner):
    H = oscillator(22, (0.5, 0.5))  # levels 0, 2, 2 (exactly degenerate), 4, 4, 4
    exact = dense_eigenvalues(H)
    result = spectrum(H, k=4, method=method, preconditioner=preconditioner, tol=1e-8, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, exact)


@pytest.mark.parametrize("dims", [1, 2])
def test_harmonic_oscillator_levels_are_n_over_v(dims):
    variances = (0.5, 1.0)[:dims]  # 2D levels 0, 1, 2 (2/v_1 = 2 and 2/v_2 ... 1/v_1 = 2)
    n = 400 if dims == 1 else 60
    H = oscillator(n, variances)
    result = spectrum(H, k=3, generator=seeded())
    levels = sorted(a / variances[0] + b / variances[-1] for a in range(4) for b in range(4 if dims == 2 else 1))[:3]
    h2 = max(H.h) ** 2
    gaps = (result.eigenvalues - result.eigenvalues[0]).numpy()
    # discretisation error O(h^2 / v^2) per level
    assert np.allclose(gaps, levels, atol=2 * h2 / min(variances) ** 2 * (1 + max(levels)))
    assert abs(float(result.eigenvalues[0])) < h2 / min(variances) ** 2


WITHOUT_GRID = [m for m in ALL_METHODS if m[1] != "fourier"]


@pytest.mark.parametrize(("method", "preconditioner"), WITHOUT_GRID)
def test_negative_ground_state_is_kept(method, preconditioner):
    values = torch.cat([torch.tensor([-1e-8, 0.3, 0.7]), torch.linspace(1.0, 50.0, 197)]).double()
    values = values[torch.randperm(200, generator=seeded(1))]
    H = DiagonalOperator(values)
    result = spectrum(H, k=3, method=method, preconditioner=preconditioner, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, np.sort(values.numpy()), slack=0.0)
    assert float(result.eigenvalues[0]) < 0


@pytest.mark.parametrize(("method", "preconditioner"), [("lobpcg", "amg"), ("lanczos", "auto"), ("eigsh", "auto")])
def test_near_degenerate_pair_of_a_diagonal_operator_is_found(method, preconditioner):
    values = torch.cat([torch.tensor([0.0, 1e-11, 1.0, 1.5]), torch.linspace(2.0, 40.0, 296)]).double()
    values = values[torch.randperm(300, generator=seeded(2))]
    # tol is relative to the gap: 1e-3 of 1e-11 is 1e-14, above float64 round-off
    result = spectrum(DiagonalOperator(values), k=3, method=method, preconditioner=preconditioner,
                      tol=1e-3, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, np.sort(values.numpy()), slack=0.0)
    assert abs(result.gap - 1e-11) <= result.gap_error <= 2e-3 * 1e-11


@pytest.mark.parametrize(("method", "preconditioner"), [("lobpcg", "fourier"), ("lanczos", "auto"), ("auto", "auto")])
def test_double_well_keeps_both_low_levels(method, preconditioner):
    H = double_well(400, centre=2.4, sigma=0.3)  # tunnelling gap ~ 7e-12, next level ~ 11
    exact = dense_eigenvalues(H)  # itself accurate to ~ 1e-12 only
    assert exact[1] - exact[0] < 1e-10 and exact[2] > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the tiny gap is below round-off
        result = spectrum(H, k=3, method=method, preconditioner=preconditioner, generator=seeded(),
                          maxiter=2000 if method == "lanczos" else 150)
    assert_bounds_hold(result, exact, slack=1e-11)
    assert 0 <= result.eigenvalues[1] - result.eigenvalues[0] < 1e-10
    assert float(result.eigenvalues[2]) > 1.0
    assert result.converged[2]


def test_deflation_with_an_exact_ground_state_saves_matvecs():
    H = double_well(300, centre=0.8, sigma=0.3)
    exact = dense_eigenvalues(H)
    deflated = spectrum(H, k=3, method="lobpcg", preconditioner="fourier", generator=seeded())
    plain = spectrum(H, k=3, method="lobpcg", preconditioner="fourier", deflate=False, generator=seeded())
    assert "ground-state start" in deflated.method and "ground-state" not in plain.method
    assert deflated.converged.all() and plain.converged.all()
    assert deflated.n_matvec < plain.n_matvec
    assert_bounds_hold(deflated, exact)
    assert abs(float(deflated.eigenvalues[0])) < 1e-10 and float(deflated.residual_norms[0]) < 1e-9


@pytest.mark.parametrize("method", ["lobpcg", "lanczos"])
def test_deflation_with_a_poor_ground_state_stays_honest(method):
    H = oscillator(200, (0.5,))
    noise = torch.randn(H.shape[0], generator=seeded(3), dtype=torch.float64)
    H.ground_state = (H.ground_state + 0.2 * noise / noise.norm()) / (H.ground_state + 0.2 * noise / noise.norm()).norm()
    exact = dense_eigenvalues(H)
    result = spectrum(H, k=3, method=method, generator=seeded(), return_eigenvectors=True)
    assert result.converged.all()
    assert_bounds_hold(result, exact)
    v = result.eigenvectors
    residual = (H.matvec(v) - v * result.eigenvalues).norm(dim=0)
    assert torch.allclose(residual, result.residual_norms, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(("method", "maxiter"), [("lobpcg", 2), ("lanczos", 20), ("eigsh-sa", 1)])
def test_non_convergence_is_flagged_and_can_raise(method, maxiter):
    H = oscillator(300, (0.5,))
    with pytest.warns(ConvergenceWarning, match="residual norms"):
        result = spectrum(H, k=3, method=method, preconditioner="jacobi", maxiter=maxiter, generator=seeded())
    assert not result.converged.all()
    exact = dense_eigenvalues(H)
    # unconverged: each value is still within its residual norm of some eigenvalue
    distance = np.abs(result.eigenvalues.numpy()[:, None] - exact[None, :]).min(1)
    assert (distance <= result.residual_norms.numpy() * (1 + 1e-8)).all()
    with pytest.raises(ConvergenceError) as info:
        spectrum(H, k=3, method=method, preconditioner="jacobi", maxiter=maxiter, raise_on_failure=True,
                 generator=seeded())
    assert isinstance(info.value, ScoreHamiltonianError) and isinstance(info.value, RuntimeError)


@pytest.mark.parametrize(("method", "preconditioner"), ITERATIVE)
def test_matvec_count_counts_columns(method, preconditioner):
    H = oscillator(100, (0.5,))
    result = spectrum(H, k=2, method=method, preconditioner=preconditioner, generator=seeded())
    assert result.n_matvec == H.columns > 0
    assert result.wall_time > 0 and result.tol == 1e-8


def test_float32_works_at_a_reachable_tol_and_is_refused_below():
    H32 = oscillator(120, (0.5,), dtype=torch.float32)
    exact = dense_eigenvalues(oscillator(120, (0.5,)))
    result = spectrum(H32, k=3, tol=1e-4, generator=seeded(), return_eigenvectors=True)
    assert result.converged.all() and result.eigenvectors.dtype == torch.float32
    assert_bounds_hold(result, exact, slack=0.0)
    with pytest.raises(InputDtypeError, match="float64"):
        spectrum(H32, k=3, tol=1e-8)


def test_gap_properties_and_argument_checks():
    H = DiagonalOperator(torch.linspace(0.0, 10.0, 50, dtype=torch.float64))
    result = spectrum(H, k=2, generator=seeded())
    assert abs(result.gap - 10 / 49) <= result.gap_error + 1e-14
    with pytest.raises(ScoreHamiltonianError):
        _ = spectrum(H, k=1, generator=seeded()).gap
    with pytest.raises(ValueError, match="method"):
        spectrum(H, method="arnoldi")
    with pytest.raises(ValueError, match="k must"):
        spectrum(H, k=48)
    with pytest.raises(ValueError, match="grid"):
        spectrum(H, preconditioner="fourier")


def test_fourier_preconditioner_inverts_the_shifted_laplacian():
    H = GridOperator((9, 7), (0.3, 0.2), torch.zeros(63, dtype=torch.float64))
    x = torch.randn(63, 2, generator=seeded(), dtype=torch.float64)
    back = fourier_preconditioner(H, 1.5)(H.matvec(x) + 1.5 * x)
    assert torch.allclose(back, x, atol=1e-12)


def test_score_hamiltonian_operator_if_available():
    operator = pytest.importorskip("scorehamiltonian.spectral.operator")
    grid_module = pytest.importorskip("scorehamiltonian.spectral.grid")
    from scorehamiltonian import OU, ExactScore, GaussianMixture

    mixture = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [[0.5, 0.7], [0.5, 0.7]])
    H = operator.ScoreHamiltonian(ExactScore(mixture, OU()), 0.1, grid_module.Grid([-5.5, -5.5], [5.5, 5.5], 56))
    exact = dense_eigenvalues(H)
    result = spectrum(H, k=3, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, exact)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name, n, method, preconditioner, solver",
                         [("asymmetric", 301, "auto", "amg", "lobpcg (amg"),
                          ("asymmetric", 301, "auto", "auto", "lobpcg (sparse LU"),
                          ("four_mode_2d", 81, "auto", "auto", "lobpcg (multigrid"),
                          ("asymmetric", 301, "eigsh", "auto", "eigsh (shift-invert")])
def test_the_same_seed_gives_the_same_bits_on_every_call(name, n, method, preconditioner, solver):
    """Repeated solves with one seed agree to the last bit: in 1D with the AMG
    preconditioner (pyamg's default prolongation smoother estimates a spectral radius from
    numpy's global random state: a different preconditioner, and eigenvalues differing at
    1e-14, on every call) and with the sparse LU that "auto" takes on a small grid, in 2D
    with multigrid and the numba kernels (the Rayleigh-Ritz update's norms once summed in an
    order that changed from call to call), and with ARPACK (whose own random start goes on
    from call to call)."""
    from scorehamiltonian import OU, ExactScore, Grid, ScoreHamiltonian, box_over_times, example

    mixture = example(name)
    H = ScoreHamiltonian(ExactScore(mixture, OU()), 0.3, Grid(*box_over_times(mixture, OU(), [0.3], 1e-12), n))
    runs = [spectrum(H, k=3, method=method, tol=1e-8, generator=seeded(7), return_eigenvectors=True,
                     preconditioner=preconditioner) for _ in range(6)]
    assert runs[0].method.startswith(solver)
    for run in runs[1:]:
        for attribute in ("eigenvalues", "eigenvectors", "residual_norms", "eigenvalue_errors", "converged"):
            assert torch.equal(getattr(run, attribute), getattr(runs[0], attribute)), attribute
        assert run.n_matvec == runs[0].n_matvec


@pytest.mark.parametrize("method", ["auto", "lanczos"])
def test_a_start_column_near_an_eigenvector_is_not_accepted_with_the_start_blocks_bounds(method):
    """1D bimodal at t = 1 (OU), 127 nodes: the ground-state start's (x - <x>) g column is
    close to the first excited state while its random guard columns sit far above lambda_2,
    so the start block's own bounds for lambda_1 are too small (5e-4 against an error of
    5.9e-3, flagged converged, for these seeds before solvers had to step past the start)."""
    from scorehamiltonian import OU, ExactScore, Grid, ScoreHamiltonian, box_from_mixture
    from scorehamiltonian.score.examples import bimodal

    H = ScoreHamiltonian(ExactScore(bimodal(), OU()), 1.0, Grid(*box_from_mixture(bimodal(), 1e-12), 127))
    exact = dense_eigenvalues(H)
    for seed in range(1, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = spectrum(H, k=2, tol=1e-3, method=method, generator=seeded(seed))
        assert_bounds_hold(result, exact)


def test_multigrid_needs_an_operator_that_coarsens_itself():
    with pytest.raises(ValueError, match="multigrid"):
        spectrum(oscillator(40, (0.5,)), k=2, preconditioner="multigrid")


def test_warm_start_with_eigenvectors_converges_at_once():
    # v0 holding the ground state itself (as a previous solve returns it) must not cost a
    # start column: that column is dropped in favour of H.ground_state.
    H = oscillator(300, (0.5,))
    w, V = np.linalg.eigh(H.to_scipy().toarray())
    v0 = torch.from_numpy(V[:, :4])
    result = spectrum(H, k=2, method="lobpcg", preconditioner="jacobi", v0=v0, tol=1e-9, generator=seeded())
    assert result.converged.all()
    assert_bounds_hold(result, w)
    # 4 start columns, 1 for the shift, at most one iteration's 4, 4 for the final check
    assert result.n_matvec <= 13


def test_tol_below_the_round_off_floor_stops_early_and_says_so():
    # Four modes at (+-1.5, +-1.5) with std (0.3, 0.6): gap ~1e-4 against a matvec round-off
    # of 2 eps ||diag(H) v|| ~ 4e-13 on 127^2 nodes, so tol = 1e-10 of the gap is out of reach.
    # The solver must stop once the residual bound sits below that floor (not spend maxiter
    # iterations, where the basis loses orthogonality), flag the values, and say which tol is
    # reachable; the values it returns keep honest bounds.
    from scorehamiltonian import OU, ExactScore, Grid, ScoreHamiltonian, box_from_mixture
    from scorehamiltonian.score.examples import four_mode_benchmark

    mixture = four_mode_benchmark()
    lo, hi = box_from_mixture(mixture, 1e-12)
    H = ScoreHamiltonian(ExactScore(mixture, OU()), 0.0, Grid(lo, hi, 127))
    with pytest.warns(ConvergenceWarning, match=r"round-off floor.*ask for tol >= "):
        result = spectrum(H, k=2, tol=1e-10, generator=seeded())
    assert not result.converged.any()
    assert result.n_matvec < 100
    exact = np.sort(sp.linalg.eigsh(H.to_scipy(), k=2, sigma=float(result.eigenvalues[0]) - 1e-3)[0])
    assert_bounds_hold(result, exact, slack=1e-13)
    assert spectrum(H, k=2, tol=1e-7, generator=seeded()).converged.all()


def test_whitening_survives_a_numerically_singular_gram_matrix():
    # After iterating at the round-off floor the Gram matrix of the search basis can lose
    # definiteness; Rayleigh-Ritz then whitens it by its eigendecomposition instead of failing.
    from scorehamiltonian.spectral.blocks import whitening

    A = torch.randn(6, 3, generator=seeded(), dtype=torch.float64)
    G = A @ A.T - 1e-14 * torch.eye(6, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(G)[1]) != 0
    W, Z = whitening(G)
    assert W.shape == (3, 6) and Z.shape == (3, 6)
    assert torch.allclose(W @ G @ W.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Z.T @ Z, G, atol=1e-10)
    C = torch.randn(6, 6, generator=seeded(1), dtype=torch.float64)
    G = C @ C.T + torch.eye(6, dtype=torch.float64)
    W, Z = whitening(G)
    assert torch.allclose(W, torch.linalg.inv(torch.linalg.cholesky(G)), atol=1e-12)
    assert torch.allclose(Z.T @ Z, G, atol=1e-10)
