"""Bundle evolveopt's update-rule runtime into one standalone Python source (no evolveopt import).

An exported optimizer must train exactly like ``build_optimizer(genome)``, so it carries the
very code that runs the rule, not a rewrite of it. This module reads the sources of the
runtime modules, drops their imports of each other, rewrites ``module.name`` references to
``name``, keeps only the top-level definitions reachable from the roots (tree shaking, imports
included), and returns one source text. Nothing is evaluated: the text is parsed and printed
with :mod:`ast`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from typing import Callable, Iterable

from evolveopt.genome.registry import primitive_modules

CORE_RUNTIME = (
    "evolveopt.genome.genes",
    "evolveopt.genome.registry",
    "evolveopt.genome.schema",
    "evolveopt.genome.slots",
    "evolveopt.primitives.tensorlist",
    "evolveopt.primitives.gradient",
    "evolveopt.primitives.moments",
    "evolveopt.primitives.preconditioners",
    "evolveopt.primitives.layerwise",
    "evolveopt.primitives.schedules",
    "evolveopt.primitives.feedback",
    "evolveopt.primitives.decay",
)
# ...then every module a registry row names for its tensor functions, then the rule and optimizer.
RUNTIME = (
    *CORE_RUNTIME,
    *(name for name in primitive_modules() if name not in CORE_RUNTIME),
    "evolveopt.compile.rule",
    "evolveopt.compile.optimizer",
)
DROP_METHODS = {("Genome", "with_genes")}  # genome parsing stays in evolveopt


def _module_aliases(tree: ast.Module) -> set[str]:
    """Names under which evolveopt modules are imported (``tl``, ``decay``, ``eve``, ...)."""
    aliases = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evolveopt"):
            if importlib.util.find_spec(node.module).submodule_search_locations is None:
                continue  # names imported from a module, not modules from a package
            aliases.update(alias.asname or alias.name for alias in node.names)
    return aliases


class _Unqualify(ast.NodeTransformer):
    def __init__(self, aliases: set[str]):
        self.aliases = aliases

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            return ast.copy_location(ast.Name(id=node.attr, ctx=node.ctx), node)
        return node


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | _string_annotations(node)


def _string_annotations(node: ast.AST) -> set[str]:
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            names.add(n.value)
    return names


def runtime_statements() -> list[ast.stmt]:
    """Every top-level statement of the runtime modules, evolveopt imports removed, unqualified."""
    statements: list[ast.stmt] = []
    for name in RUNTIME:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        aliases = _module_aliases(tree)
        tree = _Unqualify(aliases).visit(tree)
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # module docstring
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evolveopt"):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            if isinstance(node, ast.ClassDef):
                node.body = [b for b in node.body if not (isinstance(b, ast.FunctionDef)
                                                          and (node.name, b.name) in DROP_METHODS)]
            statements.append(node)
    return statements


def runtime_names() -> set[str]:
    """Every top-level name the runtime modules define."""
    return {name for node in runtime_statements() for name in _defined(node)}


def shake(statements: list[ast.stmt], roots: Iterable[str]) -> list[ast.stmt]:
    """The statements needed to define ``roots``, in their original order."""
    providers: dict[str, list[int]] = {}
    for i, node in enumerate(statements):
        for name in _defined(node):
            providers.setdefault(name, []).append(i)
    needed: set[int] = set()
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for i in providers.get(name, []):
            if i not in needed:
                needed.add(i)
                if not isinstance(statements[i], (ast.Import, ast.ImportFrom)):
                    todo.extend(_used(statements[i]))
    kept = [statements[i] for i in sorted(needed)]
    return _merge_imports(kept, seen)


def _merge_imports(statements: list[ast.stmt], used: set[str]) -> list[ast.stmt]:
    """One copy of each import, narrowed to the names that are used."""
    imports: list[ast.stmt] = []
    seen: set[str] = set()
    body: list[ast.stmt] = []
    for node in statements:
        if isinstance(node, ast.Import):
            for alias in node.names:
                key = ast.unparse(ast.Import(names=[alias]))
                if key not in seen and (alias.asname or alias.name).split(".")[0] in used:
                    seen.add(key)
                    imports.append(ast.Import(names=[alias]))
        elif isinstance(node, ast.ImportFrom):
            names = [a for a in node.names if (a.asname or a.name) in used]
            for alias in names:
                key = f"{node.module}:{alias.name}:{alias.asname}"
                if key not in seen:
                    seen.add(key)
                    imports.append(ast.ImportFrom(module=node.module, names=[alias], level=0))
        else:
            body.append(node)
    return imports + body


def bundle_source(roots: Iterable[str], patch: Callable[[ast.ClassDef], None] | None = None
                  ) -> tuple[list[str], str]:
    """(import lines, code) of the runtime needed for ``roots``; ``patch`` may edit its classes."""
    kept = shake(runtime_statements(), roots)
    imports = [ast.unparse(n) for n in kept if isinstance(n, (ast.Import, ast.ImportFrom))]
    body = [n for n in kept if not isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in body:
        if isinstance(node, ast.ClassDef) and patch is not None:
            patch(node)
    return imports, "\n\n\n".join(ast.unparse(n) for n in body)
