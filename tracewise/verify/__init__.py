"""Is an answer right? ``verify`` (math-verify with bounds), a deadline-bounded worker pool, LLM judges,
and the verify stage (``run``) that writes one verdict per trace and method."""

from tracewise.verify.answer import VerifyResult, extract_answer, parse_gold_ok, verify
from tracewise.verify.pool import verify_many
from tracewise.verify.stage import VerifyConfig, run

__all__ = ["VerifyConfig", "VerifyResult", "extract_answer", "parse_gold_ok", "run", "verify", "verify_many"]
