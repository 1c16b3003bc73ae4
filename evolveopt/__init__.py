"""evolveopt: discover deep-learning optimizers with a genetic algorithm over genomes.

    import evolveopt
    genome = evolveopt.load_genome("adan")
    optimizer = evolveopt.build_optimizer(genome, model.parameters(), lr=1e-3)

Importing the package does not import torch: genomes and the search are plain data, and the
torch-backed names below load on first use.
"""

import os as _os

# MKL's strict conditional numerical reproducibility: the bits of a GEMM do not depend on the
# thread count, nor on how a batched GEMM's matrices are shared among threads (without it, on a
# 2-thread AMD EPYC, a held-out forward pass [P, 449, 16] @ [P, 16, 10] rounded member i
# differently for odd P than for even P: a member's result depended on its unit). MKL reads it at
# its first call, so it is set here, before evolveopt trains anything; a value the user set is kept.
# Measured: no slower (docs/fitness.md, Cache).
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from evolveopt.errors import EvolveOptError, GenomeError, OptimizerUsageError
from evolveopt.genome import Genome, genome_hash, load_genome, structure_key

__version__ = "0.1.0"

_TORCH_BACKED = {
    "build_optimizer": "evolveopt.compile",
    "GenomeOptimizer": "evolveopt.compile",
    "evaluate": "evolveopt.evaluation",
}


def __getattr__(name: str):  # PEP 562: torch loads only when a torch-backed name is used
    if name in _TORCH_BACKED:
        import importlib

        return getattr(importlib.import_module(_TORCH_BACKED[name]), name)
    raise AttributeError(f"module 'evolveopt' has no attribute '{name}'")


__all__ = [
    "EvolveOptError", "Genome", "GenomeError", "GenomeOptimizer", "OptimizerUsageError",
    "build_optimizer", "evaluate", "genome_hash", "load_genome", "structure_key",
]
