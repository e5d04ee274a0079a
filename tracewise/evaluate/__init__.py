"""Sample a model on held-out problems and score it: pass@k, maj@k, token counts, CIs; test-time
controls and few-shot prompts as evaluation axes."""

from tracewise.evaluate.stage import EvalConfig, run

__all__ = ["EvalConfig", "run"]
