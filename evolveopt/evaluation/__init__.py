"""Fitness evaluation: batched training of genomes on proxy tasks, fitness, fidelity and cache."""

from evolveopt.evaluation.cache import EVALUATOR_VERSION, ResultCache
from evolveopt.evaluation.evaluator import Evaluation, WorkUnit, evaluate, execute_unit
from evolveopt.evaluation.results import MemberResult

__all__ = ["EVALUATOR_VERSION", "Evaluation", "MemberResult", "ResultCache", "WorkUnit", "evaluate", "execute_unit"]
