"""The method plugin contract as a checker any method author runs (`ferbench check-method NAME`)."""

from bench.contract.checker import CHECKS, CheckOptions, CheckResult, check_method

__all__ = ["CHECKS", "CheckOptions", "CheckResult", "check_method"]
