"""Optional dependencies: ``pip install evolveopt`` is torch, numpy and pyyaml; the rest are extras."""

from __future__ import annotations

import importlib
from types import ModuleType

from evolveopt.errors import EvolveOptError


class MissingExtraError(EvolveOptError, ImportError):
    """A feature needs a package from one of evolveopt's extras."""


def optional(module: str, extra: str) -> ModuleType:
    """``module`` imported, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"this needs the '{module.split('.')[0]}' package: "
                                f"pip install 'evolveopt[{extra}]' (or 'evolveopt[all]')") from None
