"""Write a genome as a standalone Python module: one ``torch.optim.Optimizer`` subclass, torch only.

The class is evolveopt's ``RuleOptimizer`` under the genome's name, with the genome embedded as
data and an ``__init__`` that takes gene overrides by name; the rule runtime it needs is bundled
below it (``bundle.py``), so it trains bit for bit like ``build_optimizer(genome)``. The module
docstring and the class docstring give the update equations, the provenance and the defaults.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from dataclasses import fields
from typing import Any

from evolveopt.genome.equations import render_equations, sym
from evolveopt.compile.rule import part_rows
from evolveopt.genome.registry import DEFAULT_READ, LOCI, STAGES, pipeline
from evolveopt.genome.schema import Genome, fallback_genome, schema_version_of

STRUCTURE_CLASSES = ("Genome", "Term", "Signal", "Momentum", "Precondition", "Fallback",
                     *(locus.value_type.__name__ for locus in LOCI.values() if locus.value_type))


def stage_functions(genome: Genome) -> list[str]:
    """Names of the tensor functions the genome's loci and term parts run (registry rows name them)."""
    genomes = [genome] + ([fallback_genome(genome)] if genome.fallback is not None else [])
    loci = [v.function for each in genomes for v, _ in pipeline(each.loci, *STAGES) if v.function]
    parts = [getattr(row, attribute) or DEFAULT_READ for each in genomes for _, row, attribute in part_rows(each)]
    return [function.split(":")[1] for function in dict.fromkeys([*loci, *parts])]

INIT_TEMPLATE = '''
def __init__(self, params, *, total_steps=None, maximize=False, foreach=None, capturable=False,
             differentiable=False, fused=None, **genes):
    """params or param groups; total_steps for a schedule's horizon; torch.optim's flags
    (differentiable and fused only as False); gene overrides by name (lr=3e-4)."""
    values, tensors = self._split_overrides(GENOME, genes)
    genome = replace(GENOME, genes=checked_genes(values))
    self._setup(params, genome, tensors, total_steps=total_steps, maximize=maximize, foreach=foreach,
                capturable=capturable, differentiable=differentiable, fused=fused)
'''

FOOTER_TEMPLATE = '''
GENOME = {genome}


def checked_genes(overrides):
    """The embedded genes with ``overrides`` applied; unknown names and out-of-range values raise."""
    genes = dict(GENOME.genes)
    for name, value in overrides.items():
        if name not in genes:
            raise GenomeError(f"{{GENOME.label}}: genes.{{name}}: this genome has no gene '{{name}}' (genes: {{', '.join(genes)}})")
        problem = range_problem(name, float(value))
        if problem:
            raise GenomeError(f"{{GENOME.label}}: genes.{{name}}: {{problem}}")
        genes[name] = float(value)
    return genes
'''


def class_name_for(label: str) -> str:
    """``adan`` → ``Adan``, ``quickstart#1975`` → ``Quickstart1975``; always a valid identifier."""
    words = re.findall(r"[A-Za-z0-9]+", label) or ["Evolved"]
    name = "".join(w[:1].upper() + w[1:] for w in words)
    if name[0].isdigit() or keyword.iskeyword(name):
        name = "Evolved" + name
    return name


def _float(value: float) -> str:
    if math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    return repr(float(value))


def genome_literal(genome: Genome) -> str:
    """Python source that constructs ``genome`` from the bundled dataclasses (no evaluation needed)."""
    genes = "{" + ", ".join(f"{k!r}: {_float(v)}" for k, v in genome.genes.items()) + "}"
    parts = [f"genes={genes}"]
    for f in fields(genome):
        if f.name != "genes":
            parts.append(f"{f.name}={getattr(genome, f.name)!r}")
    return "Genome(" + ", ".join(parts) + ")"


def class_docstring(genome: Genome, class_name: str, provenance: dict[str, Any]) -> str:
    equations = "\n".join(f"        {line}" for line in render_equations(genome))
    defaults = ", ".join(f"{k}={v:g}" for k, v in genome.genes.items())
    symbols = ", ".join(f"{sym(k)} = {k}" for k in genome.genes if sym(k) != k)
    source = "\n".join(f"        {k}: {v}" for k, v in provenance.items()) or "        (none recorded)"
    horizon = ", total_steps=10_000" if genome.schedule.needs_horizon else ""
    return (
        f"{genome.description or 'An optimizer discovered by evolveopt.'}\n\n"
        f"    Update, per parameter tensor θ with gradient ∇f(θ), t = 1, 2, ...:\n\n{equations}\n\n"
        f"    Symbols: {symbols}.\n\n"
        f"    Defaults: {defaults}.\n\n"
        f"    Provenance:\n{source}\n\n"
        f"    Usage:\n\n"
        f"        optimizer = {class_name}(model.parameters(), lr={genome.genes['lr']:g}{horizon})\n"
        f"        optimizer.step()   # step(closure) when the rule uses loss feedback\n"
        + (f"        optimizer.eval()   # before evaluating or saving weights: θ moves to the averaged point x\n"
           f"        optimizer.train()  # before training again: θ returns to y\n" if genome.averaging else "")
        + "    "
    )


def export_python(genome: Genome, class_name: str, provenance: dict[str, Any]) -> str:
    """The full text of a standalone module defining ``class_name`` (``...Optimizer`` if the name
    is taken by the runtime, as ``Momentum`` is)."""
    from evolveopt.export.bundle import bundle_source, runtime_names

    if class_name in runtime_names() | {"GENOME", "OptimizerUsageError", "GenomeError", "checked_genes"}:
        class_name += "Optimizer"

    init = ast.parse(INIT_TEMPLATE).body[0]
    doc = class_docstring(genome, class_name, provenance)

    def patch(node: ast.ClassDef) -> None:
        if node.name != "RuleOptimizer":
            return
        node.name = class_name
        body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        body = [init if isinstance(b, ast.FunctionDef) and b.name == "__init__" else b for b in body]
        node.body = [ast.Expr(ast.Constant(doc))] + body

    imports, code = bundle_source(("RuleOptimizer", "replace", *STRUCTURE_CLASSES, *stage_functions(genome)), patch)
    imports = sorted(set(imports) | {"import math", "from dataclasses import replace"})
    header = (
        f'"""{class_name}: {genome.description or "an optimizer discovered by evolveopt"}\n\n'
        f"A standalone torch.optim.Optimizer written by evolveopt (genome schema {schema_version_of(genome)}). It needs only\n"
        f"PyTorch: the class {class_name} below is followed by the update-rule runtime it runs, copied from\n"
        f"evolveopt so that this file trains exactly like evolveopt.build_optimizer(genome). See the class\n"
        f"docstring for the update equations, defaults and provenance.\n"
        f'"""\n'
    )
    error = (
        "class OptimizerUsageError(ValueError):\n"
        '    """A use this optimizer does not support (a missing closure, sparse gradients, a bad gene)."""\n'
        "\n\n"
        "class GenomeError(OptimizerUsageError):\n"
        '    """A param group holds a gene value outside its range."""\n'
    )
    footer = FOOTER_TEMPLATE.format(genome=genome_literal(genome))
    text = "\n".join([header, "from __future__ import annotations\n", "\n".join(imports), "\n", LOAD_GUARD, error,
                      "\n", _class_first(code, class_name), "\n", footer, LOAD_GUARD_END])
    compile(text, f"<{class_name}>", "exec")  # a syntax check only: nothing is run
    return text


# dataclasses look their class's module up in sys.modules; a file loaded by path
# (importlib.util.spec_from_file_location + exec_module) may not be registered there yet.
LOAD_GUARD = (
    "import sys as _sys\n"
    "_UNREGISTERED = __name__ not in _sys.modules  # loaded by path: stand in while the dataclasses are made\n"
    "if _UNREGISTERED:\n"
    "    _sys.modules[__name__] = type(_sys)(__name__)\n\n"
)
LOAD_GUARD_END = "\nif _UNREGISTERED:\n    del _sys.modules[__name__]\n"


def _class_first(code: str, class_name: str) -> str:
    """Readers meet the optimizer class first: move it to the top of the bundled code."""
    tree = ast.parse(code)
    cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    rest = [n for n in tree.body if n not in cls]
    return "\n\n\n".join(ast.unparse(n) for n in cls + rest)
