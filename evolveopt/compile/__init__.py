"""Genome → runnable update rule: :class:`Rule` (lists of tensors) and :class:`GenomeOptimizer`."""

from evolveopt.compile.optimizer import GenomeOptimizer, build_optimizer
from evolveopt.compile.rule import Rule, StepContext

__all__ = ["GenomeOptimizer", "Rule", "StepContext", "build_optimizer"]
