"""Evaluation: base and checkpoints scored on held-out samples with task metrics, intervals and paired tests.

`evaluate(checkpoints, data, metrics)` → `EvalResult` (`fmlab.eval.harness`); metric names in
`fmlab.eval.registry`; `fmlab eval` on the command line (`fmlab.cli.evaluation`); docs/eval.md.
"""

from fmlab.eval.harness import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
