"""The report's figures (matplotlib, Agg backend): drawing only, from a report's arrays."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["report_figures"]


def _save(fig: Any, folder: str, name: str) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(os.path.join(folder, name), dpi=110)
    plt.close(fig)


def eigenfunctions(pairs: list[dict[str, Any]], dim: int) -> Any:
    """V_t and the lowest eigenfunctions offset by their eigenvalues (1D), or images of the
    first two excited states (2D), one column per time; above 2D, the slowest Ritz function at
    samples of p_t against their two leading principal coordinates."""
    if dim > 2:
        return _ritz_functions(pairs)
    fig, axes = plt.subplots(1 if dim == 1 else 2, len(pairs), figsize=(4.2 * len(pairs), 3.6 if dim == 1 else 6.4),
                             squeeze=False)
    for col, pair in enumerate(pairs):
        if dim == 1:
            ax, x = axes[0, col], pair["axes"][0]
            values = pair["eigenvalues"]
            spread = max(float(values[-1] - values[0]), 1e-3)
            ax.plot(x, pair["potential"], color="0.4", lw=1, label="V_t")
            for j, psi in enumerate(pair["eigenvectors"]):
                psi = psi * np.sign(psi[np.abs(psi).argmax()])
                ax.plot(x, values[j] + 0.4 * spread * psi / np.abs(psi).max(), label=f"psi_{j} ({values[j]:.3g})")
            # V_t grows without bound in the tails: show the window of the levels drawn.
            ax.set_ylim(min(float(pair["potential"].min()), values[0] - 0.5 * spread) - 0.1 * spread,
                        values[-1] + 1.5 * spread)
            ax.set_xlabel("x")
            ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        else:
            (gx, gy) = pair["axes"]
            for row in range(2):
                ax = axes[row, col]
                psi = pair["eigenvectors"][row + 1]
                ax.pcolormesh(gx, gy, psi.T, cmap="RdBu_r", shading="auto")
                ax.set_title(f"psi_{row + 1}, lambda = {pair['eigenvalues'][row + 1]:.3g}", fontsize=8)
                ax.set_aspect("equal")
        axes[0, col].set_title(f"t = {pair['t']:g}" + (f"\n{axes[0, col].get_title()}" if dim > 1 else ""))
    return fig


def _ritz_functions(pairs: list[dict[str, Any]]) -> Any:
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        xy, values = pair["coordinates"], pair["values"]
        limit = float(np.abs(values).max()) or 1.0
        shown = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=4, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"t = {pair['t']:g}: slowest Ritz function, gap {pair['gap']:.3g}", fontsize=8)
        ax.set_xlabel("principal coordinate 1")
        ax.set_ylabel("principal coordinate 2")
        fig.colorbar(shown, ax=ax, shrink=0.8)
    return fig


def gap_profile(profile: Any) -> Any:
    """The gap and A(t) with their error bars and GP bands (GapProfile.plot)."""
    return profile.plot()


def schedules(judged: list[dict[str, Any]]) -> Any:
    """Each schedule's levels on a log-t axis; marker area proportional to its Langevin time."""
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(judged) + 1.5))
    for row, s in enumerate(judged):
        times, u = np.asarray(s["times"]), np.asarray(s["langevin_time"], dtype=float)
        size = 10 + 200 * u / max(u.max(), 1e-12)
        ax.scatter(times[1:], np.full(len(u), row), s=size, alpha=0.7)
        ax.plot([times[-1], times[0]], [row, row], color="0.8", lw=0.8, zorder=0)
    ax.set_yticks(range(len(judged)), [s["name"] for s in judged])
    ax.set_xscale("log")
    ax.set_xlabel("diffusion time t of each level (marker area: Langevin time)")
    return fig


def bounds(judged: list[dict[str, Any]]) -> Any:
    """Exactly propagated final TV beside the tracking bound, per schedule (log scale), or the
    reduced model's predicted TV with its standard error."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    idx = np.arange(len(judged))
    tv = np.array([s["tv"] for s in judged], dtype=float)
    if judged[0]["judge"] == "exact propagation":
        bound = np.array([s["tv_bound"] for s in judged], dtype=float)
        ax.bar(idx - 0.2, tv, 0.4, label="measured TV (exact propagation)")
        ax.bar(idx + 0.2, bound, 0.4, label="tracking bound")
    else:
        error = np.array([s["judge_error"] for s in judged], dtype=float)
        ax.bar(idx, tv, 0.5, yerr=error, capsize=3, label="predicted TV (reduced model)")
    ax.set_xticks(idx, [s["name"] for s in judged], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("total variation")
    ax.legend(fontsize=8)
    return fig


def energy(result: dict[str, Any], learned: bool) -> Any:
    """PF-ODE energy against the exact -log p_0 (error bars: numerical + model error), or their
    histogram where the reference has no log-density."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    value = np.asarray(result["value"], dtype=float)
    error = np.asarray(result["error"], dtype=float) + np.nan_to_num(np.asarray(result["model_error"], dtype=float))
    points = np.asarray(result["points"], dtype=float)
    label = "learned score, PF-ODE" if learned else "exact score, PF-ODE"
    if result["exact"] is None:
        ax.hist(value, bins=max(5, len(value) // 3), alpha=0.8, label=label)
        ax.set_xlabel("energy -log p_0 at samples of the data (k_B T)")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        return fig
    exact = np.asarray(result["exact"], dtype=float)
    if points.shape[1] == 1:
        ax.plot(points[:, 0], exact, color="0.3", label="exact -log p_0")
        ax.errorbar(points[:, 0], value, yerr=error, fmt="o", ms=3, label=label)
        ax.set_xlabel("x")
        ax.set_ylabel("energy (k_B T)")
    else:
        ax.errorbar(exact, value, yerr=error, fmt="o", ms=3, label=label)
        lim = [exact.min(), exact.max()]
        ax.plot(lim, lim, color="0.3", lw=1, label="y = x")
        ax.set_xlabel("exact -log p_0 (k_B T)")
        ax.set_ylabel("PF-ODE energy (k_B T)")
    ax.legend(fontsize=8)
    return fig


def report_figures(arrays: dict[str, Any], folder: str) -> None:
    """Draw the report figures into ``folder`` (names in report.FIGURES); a figure whose
    section failed (its arrays None) is not drawn."""
    drawn = {"eigenfunctions.png": ("eigenpairs", lambda a: eigenfunctions(a["eigenpairs"], a["dim"])),
             "gap_profile.png": ("profile", lambda a: gap_profile(a["profile"])),
             "schedules.png": ("schedules", lambda a: schedules(a["schedules"])),
             "bounds.png": ("schedules", lambda a: bounds(a["schedules"])),
             "energy.png": ("energy", lambda a: energy(a["energy"], a["learned"]))}
    for name, (needs, draw) in drawn.items():
        if arrays[needs] is not None:
            _save(draw(arrays), folder, name)
