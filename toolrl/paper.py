"""The paper's published numbers, set beside ours in the main table.

Only three numbers of Hao et al. (2026) are attributable (shared/reference/paper-notes.md §6): the
BFCL-V3 multi-turn average of Qwen2.5-1.5B-Instruct under three recipes, from a summary of the
paper. They are the mean over BFCL's four multi-turn categories of the test set, which is our
`id` split on the bfcl backend (its `average` in tables/categories.md). Which interleaved signal
the 17.25 belongs to is not stated; ETS is the paper's interleaved SFT+RL recipe, so it is
matched there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    recipe: str  # the paper's words
    signal: str  # the groups it is set beside
    scheme: str
    score: float  # percent
    source: str


PAPER_SPLIT = "id"  # the split the published numbers are comparable with

PUBLISHED: dict[str, tuple[Published, ...]] = {
    "hao2026-qwen2.5-1.5b": (
        Published("vanilla RL (GRPO)", "none", "rl", 3.50, "BFCL-V3 multi-turn average, Qwen2.5-1.5B-Instruct"),
        Published(
            "interleaving SFT with RL",
            "ets",
            "interleaved",
            17.25,
            "BFCL-V3 multi-turn average, Qwen2.5-1.5B-Instruct; the signal is not named (ETS assumed)",
        ),
        Published(
            "process reflection supervision",
            "prs",
            "interleaved",
            25.75,
            "BFCL-V3 multi-turn average, Qwen2.5-1.5B-Instruct",
        ),
    ),
}


def published_for(key: str | None, signal: str | None, scheme: str | None) -> Published | None:
    """The published number for a group, or None (no reference chosen, or none for this recipe)."""
    if key is None or signal is None:
        return None
    return next((p for p in PUBLISHED[key] if p.signal == signal and p.scheme == scheme), None)


__all__ = ["PAPER_SPLIT", "PUBLISHED", "Published", "published_for"]
