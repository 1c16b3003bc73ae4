"""The optimizers ``evolveopt benchmark`` compares a genome against, as named sets.

``adamw`` (the target-setter) is always in the comparison; ``--baselines`` adds one of these sets
(default ``all``), every member tuned under the same budget as the genomes being benchmarked.
"""

from __future__ import annotations

CLASSICS = ("adam", "adan", "adabelief", "lion", "lamb", "ever", "ga2025")
FRONTIER = ("muon", "schedulefree_adamw", "ademamix", "adopt", "cautious_adamw", "mars")
BASELINES: dict[str, tuple[str, ...]] = {"none": (), "classics": CLASSICS, "frontier": FRONTIER,
                                          "all": CLASSICS + FRONTIER}
DEFAULT_BASELINES = "all"
