"""An LLM judge for ``verify``: a judge model reads the problem, the gold and a trace's final response
and says whether the final answer is right (the paper used Qwen3-30B-A3B-Thinking).

Any generation backend serves the judge (``hf``, ``vllm``, ``openai``: the one protocol in
``tracewise.backends``); requests go out in batches and the backend batches them again. The
judge's raw output is kept verbatim in the Verdict so a disagreement with math-verify can be read
by eye. Parsing is deliberately strict about *where* the verdict is: thinking spans (``<think>``,
harmony ``analysis``) are dropped first, because a thinking judge writes "yes"/"no" many times
while it deliberates; an output with no verdict outside its thinking is ``judge_unparseable``,
never guessed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from tracewise.core.config import doc

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = """You are grading the answer to a math problem.

Problem:
{question}

Reference answer:
{gold}

Response to grade (its final part):
{response}

Is the response's FINAL answer mathematically equivalent to the reference answer? Ignore the \
reasoning and differences in formatting (LaTeX, units, 0.5 vs 1/2, spacing). If the response gives \
no final answer or several different ones, it is not equivalent.
End your reply with exactly one line: "Verdict: YES" or "Verdict: NO"."""

PLACEHOLDERS = ("question", "gold", "response", "pred")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
SHOWS = ("answer", "pred", "full")  # what {response} holds: answer span, extracted answer, whole trace

_WORDS = r"(not\s+equivalent|not\s+correct|incorrect|correct|equivalent|wrong|yes|no|true|false)"
_TRUE = {"yes", "correct", "equivalent", "true"}
# Most explicit first; within a pattern the LAST match wins (a judge restates its verdict at the end).
_VERDICT_PATTERNS = [
    re.compile(r"\bverdict\b[^A-Za-z0-9\n]{0,8}" + _WORDS + r"\b", re.I),
    re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?" + _WORDS + r"\b", re.I),
    re.compile(r"\b(?:final\s+answer|answer|judg(?:e)?ment)\s*(?:is)?\s*[:：]?[^A-Za-z0-9\n]{0,4}" + _WORDS + r"\b", re.I),
]
_BARE = re.compile(r"^[^A-Za-z0-9]*" + _WORDS + r"\b[^A-Za-z0-9]*$", re.I)  # the whole reply is one word
_LEADING = re.compile(r"^[^A-Za-z0-9]*" + _WORDS + r"\b", re.I)  # "Yes, the answers match."
_HARMONY_FINAL = re.compile(r"<\|channel\|>\s*final\s*<\|message\|>(.*?)(?:<\|end\|>|<\|return\|>|$)", re.S)


def visible_output(raw: str) -> str | None:
    """The judge's reply without its thinking; None when it never left the thinking span."""
    text = raw
    if "<|channel|>" in text:  # gpt-oss harmony: only the final channel is the reply
        finals = _HARMONY_FINAL.findall(text)
        return finals[-1].strip() if finals else None
    if "</think>" in text:
        # Thinking chat templates often open <think> in the prompt, so the output may hold only the close.
        return text.rsplit("</think>", 1)[1].strip()
    if "<think>" in text:
        return None  # thinking never closed: the judge ran out of tokens mid-thought
    return text.strip()


def parse_verdict(raw: str) -> bool | None:
    """``True`` (equivalent), ``False`` (not) or ``None`` (no verdict outside the thinking)."""
    text = visible_output(raw)
    if not text:
        return None
    for pattern in _VERDICT_PATTERNS:
        hits = pattern.findall(text)
        if hits:
            return _word_value(hits[-1])
    for pattern in (_BARE, _LEADING):
        m = pattern.search(text)
        if m:
            return _word_value(m.group(1))
    return None


def _word_value(word: str) -> bool:
    return re.sub(r"\s+", " ", word.lower()) in _TRUE


def render_prompt(template: str, *, question: str, gold: str, response: str, pred: str | None) -> str:
    """Fill ``{question}``, ``{gold}``, ``{response}``, ``{pred}``; every other brace is left alone
    (templates and answers are full of LaTeX ``\\boxed{}``, which ``str.format`` would choke on)."""
    values = {"question": question, "gold": gold, "response": response, "pred": pred or "(none extracted)"}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def excerpt(raw: str | None, limit: int = 160) -> str:
    """A one-line excerpt for tables: the reply outside the thinking (or the raw tail), shortened."""
    if not raw:
        return ""
    text = visible_output(raw) or raw[-limit:]
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


@dataclass
class LLMJudgeConfig:
    """Which judge answers ``verify``'s 'judge' method, and how it is asked."""

    backend: str = doc("'embedded' (procedural judge, error rates in judge_cfg) or a generation backend "
                       "serving a judge model: 'hf', 'vllm', 'openai'.", "embedded")
    model: str = doc("Judge model: local path / HF id (hf, vllm) or served model name (openai).", "")
    backend_args: dict = doc("Extra backend constructor arguments (e.g. base_url, tensor_parallel_size, dtype).",
                             factory=dict)
    template: str = doc("Prompt template with {question} {gold} {response} {pred}; '' = the built-in one.", "")
    template_file: str = doc("File holding the prompt template (overrides template; its bytes key the run).", "",
                             hash=False)
    shows: str = doc("What {response} holds: 'answer' (text after the thinking), 'pred' (math-verify's "
                     "extracted answer) or 'full' (the whole trace).", "answer")
    chat: bool = doc("Send the prompt as a chat message (the model's chat template) rather than raw text.", True)
    max_tokens: int = doc("Judge tokens per request (thinking judges need thousands).", 4096)
    retry_max_tokens: int = doc("An output cut off (finish 'length') before any verdict is asked again ONCE with this "
                                "budget; 0 = never. Backends seed each request by its id, so the retry continues "
                                "the same sample: only the cut-off outputs pay for the longer budget.", 0)
    temperature: float = doc("Judge sampling temperature (0 = greedy).", 0.0)
    top_p: float = doc("Judge nucleus sampling.", 1.0)
    seed: int = doc("Judge sampling seed.", 0)
    batch_size: int = doc("Requests per backend batch.", 64, hash=False)
    flush_every: int = doc("Traces judged per write to verdicts (a crash loses at most this many).", 256, hash=False)

    def validate(self) -> None:
        from tracewise.backends import BACKENDS

        if self.backend != "embedded" and self.backend not in BACKENDS:
            raise ValueError(f"verify.judge.backend: unknown judge backend {self.backend!r}; "
                             f"valid: {sorted(set(BACKENDS) | {'embedded'})}")
        if self.backend != "embedded" and not self.model:
            raise ValueError(f"verify.judge.model is required for judge backend {self.backend!r}")
        if self.shows not in SHOWS:
            raise ValueError(f"verify.judge.shows: expected one of {list(SHOWS)}, got {self.shows!r}")
        if self.template_file and not Path(self.template_file).is_file():
            raise ValueError(f"verify.judge.template_file: {self.template_file!r} not found")
        text = self.template_text()
        if "{gold}" not in text or not ("{response}" in text or "{pred}" in text):
            raise ValueError("verify.judge.template: must contain {gold} and {response} or {pred}")
        for name in ("max_tokens", "batch_size", "flush_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"verify.judge.{name} must be >= 1, got {getattr(self, name)}")
        if self.retry_max_tokens and self.retry_max_tokens <= self.max_tokens:
            raise ValueError(f"verify.judge.retry_max_tokens ({self.retry_max_tokens}) must be 0 (off) or larger "
                             f"than max_tokens ({self.max_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("verify.judge: temperature must be >= 0 and top_p in (0, 1]")

    def template_text(self) -> str:
        if self.template_file:
            return Path(self.template_file).read_text(encoding="utf-8")
        return self.template or DEFAULT_TEMPLATE


@dataclass
class JudgeItem:
    """One question to the judge: a trace's response against its problem's gold."""

    key: str  # Trace.key
    question: str
    gold: str
    pred: str | None  # math-verify's extraction
    answer_text: str  # the trace's text after its thinking
    text: str  # the whole trace


@dataclass
class JudgeResult:
    correct: bool | None  # None: no verdict could be parsed
    raw: str
    meta: dict = field(default_factory=dict)


class LLMJudge:
    """Batch judge over any backend: ``judge(items) -> [JudgeResult]`` in the items' order."""

    def __init__(self, cfg: LLMJudgeConfig, backend=None) -> None:
        from tracewise.backends import get_backend

        self.cfg = cfg
        self.template = cfg.template_text()
        self.backend = backend if backend is not None else get_backend(
            cfg.backend, model=cfg.model, batch_size=cfg.batch_size, **cfg.backend_args)

    def request(self, item: JudgeItem):
        from tracewise.backends.base import Request

        response = {"answer": item.answer_text, "pred": item.pred or "(none extracted)", "full": item.text}[self.cfg.shows]
        prompt = render_prompt(self.template, question=item.question, gold=item.gold, response=response,
                               pred=item.pred)
        if self.cfg.chat:
            return Request(id=item.key, messages=[{"role": "user", "content": prompt}])
        return Request(id=item.key, prompt=prompt)

    def __call__(self, items: list[JudgeItem]) -> list[JudgeResult | None]:
        """Results in the items' order; ``None`` where the backend gave up on a request (e.g. an
        endpoint failing past its retries): the caller stores nothing for it, so a rerun asks again.
        Outputs cut off before a verdict are asked again once at ``retry_max_tokens`` (if set)."""
        if not items:
            return []
        requests = [self.request(i) for i in items]
        got = self._ask(requests, self.cfg.max_tokens)
        cut = [r for r in requests if r.id in got and got[r.id].finish_reason == "length"
               and parse_verdict(got[r.id].text) is None]
        retried: set[str] = set()
        if cut and self.cfg.retry_max_tokens:
            log.info("judge: %d of %d outputs were cut off at %d tokens before a verdict; asking them again at %d",
                     len(cut), len(requests), self.cfg.max_tokens, self.cfg.retry_max_tokens)
            again = self._ask(cut, self.cfg.retry_max_tokens)
            got.update(again)
            retried = set(again)
        out: list[JudgeResult | None] = []
        for r in requests:
            c = got.get(r.id)
            if c is None:
                out.append(None)
                continue
            meta = {"judge_model": self.cfg.model, "judge_tokens": c.n_tokens, "judge_finish": c.finish_reason}
            if r.id in retried:
                meta["judge_retried"] = True
            out.append(JudgeResult(parse_verdict(c.text), c.text, meta))
        n_none = sum(o is not None and o.correct is None for o in out)
        if n_none:
            n_cut = sum(o is not None and o.correct is None and o.meta["judge_finish"] == "length" for o in out)
            log.warning("judge: %d of %d outputs had no parseable verdict, %d of them cut off at the token budget "
                        "(raw outputs kept in verdicts; raise judge.max_tokens / judge.retry_max_tokens if that "
                        "share is large)", n_none, len(out), n_cut)
        return out

    def _ask(self, requests, max_tokens: int) -> dict:
        from tracewise.backends.base import SamplingParams

        sampling = SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_tokens=max_tokens, seed=self.cfg.seed)
        got = {}
        for batch in self.backend.generate(requests, sampling):
            for c in batch:
                got[c.request_id] = c
        return got
