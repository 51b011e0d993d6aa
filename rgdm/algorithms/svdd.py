"""SVDD-style step-wise value decoding (Li et al., 2024): training-free, greedy in the Tweedie value.

At each reverse step, draw ``K`` candidates of ``p_theta(x_s | x_t)`` and keep the one whose Tweedie
estimate ``x0_hat`` scores best. It is RGDM's greedy selection at temperature zero, so the two differ
only in how a candidate is chosen (argmax here, ``softmax(v / tau)`` there). SVDD values each candidate
with its own network evaluation (``value=exact``), as the paper does.
"""

from __future__ import annotations

from rgdm.algorithms.guided_sampling import GreedySelection
from rgdm.rewards.scorer import Scorer


def svdd(scorer: Scorer, candidates: int = 8) -> GreedySelection:
    """The SVDD sampling transition: ``K`` candidates a step, the best Tweedie value kept."""
    return GreedySelection(scorer, candidates=candidates, temperature=0.0, value="exact")
