"""Round trips with the real libraries (scorehamiltonian.sampling.exports): the NFE designed is the NFE
run, and the library's output is the toolkit's solver to round-off.

Tiny exact models: the Gaussian-mixture score wrapped as each library's model (a k-diffusion
denoiser D(y, sigma) of the process, a diffusers epsilon-model on the scheduler's own table, an
EDM-preconditioned network for EDMEulerScheduler). k-diffusion runs in float64: agreement to
64 u (u = 2^-53) of the largest value. diffusers keeps its sigmas in float32 and rounds the
sample to float32 at each Euler / Heun step: the toolkit is run on the levels the scheduler
actually holds (read back with schedule_from_sigmas) and agreement is 16 u32 per step
(u32 = 2^-24) of the largest value (measured: 1-4 u32 overall).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from scorehamiltonian import EDM, OU, ExactScore, example
from scorehamiltonian.common.errors import ScheduleError
from scorehamiltonian.sampling import Schedule, schedule_from_sigmas, standard_schedule
from scorehamiltonian.sampling.solvers import prior_samples, sample, solver_nfe
from scorehamiltonian.score.processes import DiscreteVP
from tests.score.test_k_diffusion_adapter import kd  # noqa: F401  (the k-diffusion fixture)

MIXTURE = example("asymmetric")
#: The published Align Your Steps timesteps for Stable Diffusion 1.5 (10 steps, integer indices).
AYS_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0]


class Counted:
    """A callable model that counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


def _k_denoiser(score):
    process = score.process

    def denoise(y, sigma):
        t = float(process.log_snr_to_t(torch.tensor(-2 * math.log(float(sigma[0])), dtype=torch.float64)))
        alpha, sigma_t = float(process.alpha(t)), float(process.sigma(t))
        return (alpha * y + sigma_t**2 * score(alpha * y, t)) / alpha

    return Counted(denoise)


@pytest.mark.parametrize("process", [OU(), EDM(80.0)], ids=["OU", "EDM"])
@pytest.mark.parametrize(("sampler", "solver"), [("sample_euler", "euler"), ("sample_heun", "heun"),
                                                 ("sample_dpmpp_2m", "dpmpp-2m"),
                                                 ("sample_euler_ancestral", "ancestral")])
@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_k_diffusion_runs_the_toolkits_solver(kd, process, sampler, solver, final):  # noqa: F811
    score = ExactScore(MIXTURE, process)
    t_max, t_min = (5.0, 1e-3) if isinstance(process, OU) else (80.0, 0.002)
    schedule = standard_schedule("edm", 6, t_max, t_min, process)
    exported = schedule.to_k_diffusion(process, final)
    x0 = prior_samples(process, t_max, 5, 1, torch.Generator().manual_seed(0))
    denoiser = _k_denoiser(score)
    noise = torch.Generator().manual_seed(7)
    extra = {"noise_sampler": lambda s, s_next: torch.randn(x0.shape, generator=noise, dtype=torch.float64)}
    y = getattr(kd.sampling, sampler)(denoiser, exported.scale_in * x0, exported.sigmas, disable=True,
                                      **(extra if solver == "ancestral" else {}))
    run = sample(solver, score, x0, schedule, final=final, generator=torch.Generator().manual_seed(7))
    assert denoiser.calls == run.nfe == solver_nfe(solver, schedule.n_levels + (final == "zero"),
                                                   to_zero=final == "zero")
    scale = float(run.x.abs().max())
    torch.testing.assert_close(exported.scale_out * y, run.x, rtol=0, atol=64 * 2.0**-53 * scale)


def test_library_sigma_lists_come_back_as_schedules(kd):  # noqa: F811
    sigmas = kd.sampling.get_sigmas_karras(8, 0.002, 80.0).double()
    schedule, final = schedule_from_sigmas(sigmas, EDM(80.0))
    assert final == "zero" and schedule.n_levels == 7
    np.testing.assert_allclose(schedule.sigmas(EDM(80.0), final), sigmas.numpy(), rtol=1e-12)


diffusers = pytest.importorskip("diffusers")
# diffusers' own schedulers call np.array(tensor, copy=False) (a numpy 2 DeprecationWarning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _linear(name, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(diffusers, name)(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **config)


@pytest.fixture(scope="module")
def table():
    return DiscreteVP(_linear("DDPMScheduler").alphas_cumprod.double())


def _eps_model(score):
    process = score.process

    def eps(x, timestep):
        t = process.timestep_to_t(timestep.double().reshape(-1)).expand(x.shape[0])
        return -process.sigma(t)[:, None] * score(x.double(), t)

    return Counted(eps)


def _run(configured, model, start, variance_exploding):
    sample_ = start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in configured.timesteps:
            model_input = configured.scale_model_input(sample_, t) if variance_exploding else sample_
            sample_ = configured.step(model(model_input, t), t, sample_).prev_sample
    return sample_


CASES = [("EulerDiscreteScheduler", "euler", "t_min"), ("EulerDiscreteScheduler", "euler", "zero"),
         ("HeunDiscreteScheduler", "heun", "zero"), ("DPMSolverMultistepScheduler", "dpmpp-2m", "t_min"),
         ("DPMSolverMultistepScheduler", "dpmpp-2m", "zero")]


@pytest.mark.parametrize(("name", "solver", "final"), CASES)
def test_diffusers_runs_the_toolkits_solver(table, name, solver, final):
    score = ExactScore(MIXTURE, table)
    steps = AYS_TIMESTEPS if final == "t_min" else AYS_TIMESTEPS[:-1]
    schedule = Schedule(np.array(steps) / 999, np.zeros(len(steps) - 1), "ays")
    configured = schedule.to_diffusers(table, _linear(name), final)
    model = _eps_model(score)
    x0 = prior_samples(table, 1.0, 4, 1, torch.Generator().manual_seed(0))
    variance_exploding = solver != "dpmpp-2m"  # Euler and Heun step y = x / alpha, DPM-Solver steps x
    scale_in = 1 / float(table.alpha(schedule.t_max)) if variance_exploding else 1.0
    out = _run(configured, model, scale_in * x0, variance_exploding)
    levels = configured.sigmas.double().numpy()
    held, held_final = schedule_from_sigmas(np.unique(levels)[::-1] if solver == "heun" else levels, table)
    run = sample(solver, score, x0, held, final=held_final)
    n_steps = schedule.n_levels + (final == "zero")
    assert held_final == final and held.n_levels == schedule.n_levels
    assert model.calls == len(configured.timesteps) == run.nfe == solver_nfe(solver, n_steps, to_zero=final == "zero")
    scale_out = float(table.alpha(held.t_min)) if variance_exploding and final == "t_min" else 1.0
    scale = float(run.x.abs().max())
    torch.testing.assert_close(scale_out * out, run.x, rtol=0, atol=16 * n_steps * 2.0**-24 * scale)


def test_edm_euler_scheduler_gets_its_ramp():
    process = EDM(80.0)
    score = ExactScore(MIXTURE, process)
    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, prediction_type="epsilon")
    schedule = standard_schedule("log-snr", 7, 60.0, 0.01, process)  # not Karras: the ramp must carry it
    configured = schedule.to_diffusers(process, scheduler, "zero")
    np.testing.assert_allclose(configured.sigmas.double().numpy(), schedule.sigmas(process, "zero"), rtol=2e-6)
    sigma_data = scheduler.config.sigma_data

    def network(model_input, c_noise):  # F with c_skip x + c_out F equal to the exact denoiser
        sigma = float(torch.exp(4 * c_noise.double().reshape(-1)[0]))
        x = model_input / float(scheduler._get_conditioning_c_in(sigma))
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
        return (x + sigma**2 * score(x, sigma) - c_skip * x) / c_out

    model = Counted(network)
    x0 = 60.0 * torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sample_ = x0
    for t in configured.timesteps:
        sample_ = configured.step(model(configured.scale_model_input(sample_, t), t), t, sample_).prev_sample
    held, final = schedule_from_sigmas(configured.sigmas.double().numpy(), process)
    run = sample("euler", score, x0, held, final=final)
    assert model.calls == run.nfe == 8
    torch.testing.assert_close(sample_.double(), run.x, rtol=0, atol=16 * 8 * 2.0**-24 * float(run.x.abs().max()))


def test_an_ou_design_keeps_its_noise_levels_in_diffusers(table):
    # The former export handed diffusers OU times as training indices: sigma_max came out 3.44, not 148.4.
    schedule = standard_schedule("edm", 10, 5.0, 1e-3, OU())
    configured = schedule.to_diffusers(OU(), _linear("EulerDiscreteScheduler"))
    assert math.isclose(float(configured.sigmas[0]), math.sqrt(math.expm1(10.0)), rel_tol=1e-6)
    assert len(configured.timesteps) == 10 and len(configured.sigmas) == 11


def test_what_a_scheduler_cannot_run_is_refused(table):
    schedule = standard_schedule("edm", 5, 0.9, 0.01, table)
    with pytest.raises(ScheduleError, match="always ends with a step to sigma = 0"):
        schedule.to_diffusers(table, _linear("HeunDiscreteScheduler"), "t_min")
    with pytest.raises(ScheduleError, match="integer timesteps only"):
        schedule.to_diffusers(table, _linear("DPMSolverMultistepScheduler"), "zero")
    with pytest.raises(ScheduleError, match="outside the range"):
        standard_schedule("edm", 5, 9.0, 0.01, OU()).to_diffusers(OU(), _linear("EulerDiscreteScheduler"))
    with pytest.raises(ScheduleError, match="no export to"):
        schedule.to_diffusers(table, _linear("DDPMScheduler"))
