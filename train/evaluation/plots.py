"""Pictures of runs: the validation curve and the test SI-SDRi histogram.

Used at the end of ``python -m train`` and ``python -m train.evaluate`` (one run:
``save_run_plots``, reading the run folder through ``train.run_folder``) and by
``python -m train.report`` (several runs on one figure,
the arms of a sweep in distinct colours and their seeds in shades of it).
Every function returns ``[]`` (and draws nothing) when matplotlib is not installed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..run_folder import TEST_HIST_PNG, VAL_CURVE_PNG, RunFolder

LOG_SCALE_ITEMS = 100
OUTSIDE_LEGEND = 3           # more lines than this: the legend goes beside the axes
_SEED = re.compile(r"[\s_\-/]*seed[\s_=\-]*\d+", re.IGNORECASE)


# --------------------------------------------------------------------------- colours
def arm_of(name: str) -> str:
    """The sweep arm of a run name: the name without its seed (``robust_seed1`` -> ``robust``)."""
    return _SEED.sub("", name).strip(" _-/") or name


def arm_colors(names: Sequence[str]) -> list:
    """One RGBA colour per run: a hue per arm (first-seen order), seeds in shades of it."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    arms = [arm_of(n) for n in names]
    order = list(dict.fromkeys(arms))
    base = colormaps["tab10"].colors
    colors = []
    for i, arm in enumerate(arms):
        seeds = [j for j, a in enumerate(arms) if a == arm]
        k, n = seeds.index(i), len(seeds)
        r, g, b, _ = to_rgba(base[order.index(arm) % len(base)])
        # Shades from the full colour (first seed) towards 55 % mixed with white.
        t = 0.55 * k / max(n - 1, 1) if n > 1 else 0.0
        colors.append((r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t, 1.0))
    return colors


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# --------------------------------------------------------------------------- figures
def plot_val_curves(curves: Sequence[tuple[str, list[dict]]], path: Path,
                    band: bool = False) -> list[Path]:
    """Validation mean SI-SDRi against step, one line per ``(name, val rows)``.

    ``band``: also shade the 25-75 and 5-95 percentile bands (readable for one run).
    """
    plt = _pyplot()
    curves = [(n, rows) for n, rows in curves if rows]
    if plt is None or not curves:
        return []
    colors = arm_colors([n for n, _ in curves])
    fig, ax = plt.subplots(figsize=_figsize(len(curves)))
    for (name, rows), color in zip(curves, colors):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["mean"] for r in rows], marker="o", markersize=3, color=color,
                label=f"{name} (last {rows[-1]['mean']:.2f} dB)")
        if band and all("p5" in r for r in rows):
            ax.fill_between(steps, [r["p25"] for r in rows], [r["p75"] for r in rows],
                            color=color, alpha=0.25, linewidth=0, label="25-75 percentile")
            ax.fill_between(steps, [r["p5"] for r in rows], [r["p95"] for r in rows],
                            color=color, alpha=0.1, linewidth=0, label="5-95 percentile")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation SI-SDRi (dB)")
    ax.set_title("validation SI-SDRi")
    _legend(ax, len(curves))
    ax.grid(alpha=0.3)
    return [_save(fig, plt, path)]


def plot_histograms(series: Sequence[tuple[str, np.ndarray]], path: Path) -> list[Path]:
    """Histogram of per-source test SI-SDRi, one outline per ``(name, values)``; the mean
    of each as a dashed line. Log density (as in the paper's figure) from 100 items on."""
    plt = _pyplot()
    series = [(n, np.asarray(v, dtype=float)) for n, v in series if v is not None and len(v)]
    if plt is None or not series:
        return []
    colors = arm_colors([n for n, _ in series])
    lo = min(v.min() for _, v in series)
    hi = max(v.max() for _, v in series)
    n = max(v.size for _, v in series)
    bins = np.linspace(np.floor(lo), np.ceil(hi) + 1e-9, int(np.clip(2 * np.sqrt(n), 8, 40)) + 1)
    fig, ax = plt.subplots(figsize=_figsize(len(series)))
    for (name, values), color in zip(series, colors):
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.6, color=color,
                label=f"{name}: mean {values.mean():.2f}, p5 {np.percentile(values, 5):.2f} "
                      f"(n={values.size})")
        ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1)
    # The log scale shows the low tail that robust weighting targets; it needs enough items.
    log = n >= LOG_SCALE_ITEMS
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("test SI-SDRi per source (dB)")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.set_title("test SI-SDRi (dashed: mean)")
    _legend(ax, len(series))
    ax.grid(alpha=0.3)
    return [_save(fig, plt, path)]


def save_run_plots(run_dir: Path, name: Optional[str] = None, quiet: bool = False) -> list[Path]:
    """``val_curve.png`` and ``test_sisdri_hist.png`` of one run (those it has data for)."""
    folder = RunFolder(run_dir)
    name = name or folder.path.name
    if _pyplot() is None:
        if not quiet:
            print("no plots: matplotlib is not installed (pip install matplotlib)")
        return []
    saved = plot_val_curves([(name, folder.read_metrics("val"))], folder.path / VAL_CURVE_PNG,
                            band=True)
    items = folder.read_test_items()
    if items is not None:
        saved += plot_histograms([(name, items["sisdri"])], folder.path / TEST_HIST_PNG)
    if saved and not quiet:
        print("plots: " + ", ".join(str(p) for p in saved))
    return saved


def _figsize(lines: int) -> tuple[float, float]:
    return (7, 4) if lines <= OUTSIDE_LEGEND else (10, 4.5)


def _legend(ax, lines: int) -> None:
    """Inside the axes for a few lines; to their right for a sweep, so it hides no data."""
    if lines <= OUTSIDE_LEGEND:
        ax.legend(fontsize=8)
    else:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
