"""Where problems come from: the embedded world, problem files, and benchmark loaders (GSM8K, MATH-500,
AIME-2024, any HF dataset or local file)."""

from tracewise.data.benchmarks import BENCHMARKS, format_prompt, load_benchmark
from tracewise.data.sources import ProblemsConfig, load_problems

__all__ = ["BENCHMARKS", "ProblemsConfig", "format_prompt", "load_benchmark", "load_problems"]
