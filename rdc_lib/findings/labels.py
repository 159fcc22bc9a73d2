"""How tables and figures name a stored row's defence: its LM radius, grid start and level count.

One home for these names: docs/results.md, docs/findings.md and the findings figures all print them.
"""

from __future__ import annotations

from ..core.choices import GRID_SIGMA_MIN, LM_ETA
from ..experiments.study import ROBUST_SETTINGS

__all__ = ["defense_label", "eta_text"]


def eta_text(eta: float) -> str:
    """An LM radius as the docs write it: the paper's 8/255 by name, any other as a number."""
    return "8/255" if abs(eta - LM_ETA) < 1e-12 else f"{eta:g}"


def defense_label(row: dict) -> str:
    """The defense of a stored row as the tables name it: RDC with its LM radius (rows stored before the radius
    was recorded used the default), a DC grid that starts above the paper's smallest level and a level count other
    than the headline protocol's T (ROBUST_SETTINGS, 16), e.g. 'rdc (eta 8/255)', 'dc (levels from sigma 0.45)',
    'dc (levels from sigma 0.6, T 32)'."""
    parts = [f"eta {eta_text(row.get('lm_eta', LM_ETA))}"] if row["defense"] == "rdc" else []
    if row.get("grid_sigma_min", GRID_SIGMA_MIN) != GRID_SIGMA_MIN:
        parts.append(f"levels from sigma {row['grid_sigma_min']:g}")
    headline_t = ROBUST_SETTINGS["timesteps"]
    if row["defense"] in ("dc", "rdc") and row.get("timesteps", headline_t) != headline_t:
        parts.append(f"T {row['timesteps']}")
    return f"{row['defense']} ({', '.join(parts)})" if parts else row["defense"]
