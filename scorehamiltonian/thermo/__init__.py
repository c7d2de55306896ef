"""Thermodynamics: energies read out of a score and free-energy differences between states.

THEORY section 5. Energies in units of k_B T, E(x) = -log p_0(x).

- ``energy``: -log p_0(x) by the probability-flow ODE with its error (:func:`energy`),
  integrated by ``integrators`` (Runge-Kutta with step doubling, dopri5).
- ``line_energy``: log p(b) - log p(a) as line integrals of the score along several paths,
  with the cycle-closure audit (:func:`line_energy`), and the disagreement of the two readouts
  (:func:`readout_disagreement`).
- ``free_energy``: Delta F by TI, AIS, BAR, MBAR and Zwanzig (:func:`free_energy_difference`),
  along the alchemical ``path`` between two end states (:class:`ScoreEnergy` for a learned
  one) and the ``lambda_schedules`` that space it (:func:`lambda_schedule`).
- ``states``: free energies of states (basins found from the density, or given regions) by
  quadrature on a grid, with numerical and model errors (:func:`state_free_energies`).
- ``model_error``: the one rule for the model error of every readout above (0 for an exact
  source, an ensemble's members' spread, NaN and the flag "model_unknown" for a single
  learned model).
"""

from .energy import EnergyResult, default_schedule, energy
from .free_energy import FreeEnergyResult, free_energy_difference
from .lambda_schedules import LambdaSchedule, lambda_schedule
from .line_energy import LineEnergyResult, ReadoutDisagreement, line_energy, readout_disagreement
from .path import ScoreEnergy
from .states import StateFreeEnergies, state_free_energies

__all__ = [
    "EnergyResult",
    "FreeEnergyResult",
    "LambdaSchedule",
    "LineEnergyResult",
    "ReadoutDisagreement",
    "ScoreEnergy",
    "StateFreeEnergies",
    "default_schedule",
    "energy",
    "free_energy_difference",
    "lambda_schedule",
    "line_energy",
    "readout_disagreement",
    "state_free_energies",
]
