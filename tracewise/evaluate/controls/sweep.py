"""The controls by name, their config (``eval.control``) and the eval stage's two entry points:
``run_control`` (one setting) and ``control_sweep`` (every value of ``ControlConfig.budgets`` in one
call, sharing generation across them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from tracewise.backends.base import Backend, Completion, Request, SamplingParams
from tracewise.core.config import doc
from tracewise.evaluate.controls.budget import budget_force, budget_sweep, truncate, truncate_sweep
from tracewise.evaluate.controls.continuation import (_check_backend, _check_requests, _non_negative_int, _plain,
                                                      _positive_int, supports_prefix)
from tracewise.evaluate.controls.think_free import THINK_FREE_PREFIX, think_free
from tracewise.evaluate.controls.wait import wait_extend, wait_sweep


# ---- one entry point for the eval stage ---------------------------------------------------------

@dataclass(frozen=True)
class Control:
    """A control by name: ``run(control, backend, requests, sampling)`` at one setting; controls with a
    token parameter also name it (``swept_field``) and run a whole sweep in one call (``sweep``)."""

    run: Callable[["ControlConfig", Backend, list[Request], SamplingParams], list[Completion]]
    sweep: Callable[["ControlConfig", Backend, list[Request], SamplingParams], dict[int, list[Completion]]] | None = None
    swept_field: str | None = None
    needs_prefix: bool = False


REGISTRY: dict[str, Control] = {}
# Controls with a token parameter that a sweep varies, and the field it sets (kept in step with REGISTRY).
SWEEPABLE: dict[str, str] = {}


def register_control(name: str, control: Control) -> Control:
    """Make ``control`` available as ``eval.control.name=<name>`` (and ``run_control(name, ...)``)."""
    if name in REGISTRY:
        raise ValueError(f"control {name!r} is already registered")
    REGISTRY[name] = control
    if control.swept_field:
        SWEEPABLE[name] = control.swept_field
    return control


def get_control(name: str) -> Control:
    """The registered control ``name``; ValueError listing the valid names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown control {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _run_none(c, backend, requests, sampling):
    _check_requests(requests, sampling)
    _check_backend(backend, prefix=False)
    return _plain(backend, requests, sampling, sampling.max_tokens, {"control": "none"})


def _run_think_free(c, backend, requests, sampling):
    _check_requests(requests, sampling)
    reqs = think_free(requests, prefix=c.think_prefix)
    _check_backend(backend, prefix=True)
    # The inserted span is part of the assistant text (so the parse sees empty thinking).
    return _plain(backend, reqs, sampling, sampling.max_tokens, {"control": "think_free"}, insert=c.think_prefix)


register_control("none", Control(_run_none))
register_control("truncate", Control(
    lambda c, b, r, s: truncate(b, r, s, c.budget),
    sweep=lambda c, b, r, s: truncate_sweep(b, r, s, c.budgets), swept_field="budget"))
register_control("budget_force", Control(
    lambda c, b, r, s: budget_force(b, r, s, c.budget, final_prompt=c.final_prompt, answer_tokens=c.answer_tokens),
    sweep=lambda c, b, r, s: budget_sweep(b, r, s, c.budgets, final_prompt=c.final_prompt,
                                          answer_tokens=c.answer_tokens),
    swept_field="budget", needs_prefix=True))
register_control("wait_extend", Control(
    lambda c, b, r, s: wait_extend(b, r, s, c.min_thinking, c.max_waits, wait=c.wait),
    sweep=lambda c, b, r, s: wait_sweep(b, r, s, c.budgets, c.max_waits, wait=c.wait),
    swept_field="min_thinking", needs_prefix=True))
register_control("think_free", Control(_run_think_free, needs_prefix=True))

CONTROLS = tuple(REGISTRY)  # the built-in controls, in the order the docs list them

# Controls with a token parameter that a sweep varies, and the field it sets.
SWEEPABLE = {"budget_force": "budget", "truncate": "budget", "wait_extend": "min_thinking"}

NEEDS_PREFIX = ("budget_force", "wait_extend", "think_free")


@dataclass
class ControlConfig:
    """A test-time control applied while evaluating (``eval.control``)."""

    name: str = doc(f"Control: one of {', '.join(CONTROLS)}.", "none")
    budget: int = doc("Thinking-token budget (budget_force) or total token cap (truncate).", 0)
    budgets: list[int] = doc(
        "Sweep: evaluate at each of these values in one call (budget_force/truncate: budget, one generation "
        "at the largest budget is cut for the smaller ones; wait_extend: min_thinking). With name 'none' the "
        "sweep is budget_force. CLI: tracewise eval --budget 16,32,64.", factory=list)
    answer_tokens: int = doc("budget_force: max answer tokens after the thinking.", 64)
    final_prompt: str = doc("budget_force: text inserted after the forced </think>.", "Final Answer:")
    min_thinking: int = doc("wait_extend: extend thinking shorter than this many tokens.", 0)
    max_waits: int = doc("wait_extend: at most this many 'Wait' insertions per sample.", 0)
    wait: str = doc("wait_extend: the inserted text.", "Wait")
    think_prefix: str = doc("think_free: the empty thinking span ('</think>' if the template opens it).", THINK_FREE_PREFIX)

    def __post_init__(self) -> None:
        # `tracewise eval --budget 16,32` names no control: a budget sweep is s1 budget forcing.
        if self.budgets and self.name == "none":
            self.name = "budget_force"

    def validate(self) -> None:
        get_control(self.name)  # ValueError listing the valid names
        if self.budgets:
            if not isinstance(self.budgets, (list, tuple)):
                raise ValueError(f"control.budgets must be a list of positive ints, got {self.budgets!r}")
            if self.name not in SWEEPABLE:
                raise ValueError(f"control.budgets: control {self.name!r} has no budget to sweep; "
                                 f"sweepable: {', '.join(SWEEPABLE)}")
            for b in self.budgets:
                _positive_int(b, "each of control.budgets")
            if len(set(self.budgets)) != len(self.budgets):
                raise ValueError(f"control.budgets lists a budget twice: {list(self.budgets)}")
            if getattr(self, SWEEPABLE[self.name]):
                raise ValueError(f"set control.{SWEEPABLE[self.name]} or control.budgets (a sweep), not both")
        elif self.name in ("budget_force", "truncate"):
            _positive_int(self.budget, f"control.budget ({self.name})")
        if self.name == "budget_force":
            _positive_int(self.answer_tokens, "control.answer_tokens")
        if self.name == "wait_extend":
            _non_negative_int(self.min_thinking, "control.min_thinking")
            _non_negative_int(self.max_waits, "control.max_waits")

    def at(self, value: int) -> "ControlConfig":
        """This control at one point of its sweep (``budgets`` cleared)."""
        return dataclasses.replace(self, budgets=[], **{SWEEPABLE[self.name]: value})

    @property
    def points(self) -> list["ControlConfig"]:
        """The single controls this config evaluates: one per swept value, in ascending order."""
        return [self.at(b) for b in sorted(self.budgets)] if self.budgets else [self]

    @property
    def swept_value(self) -> int | None:
        """The control's token parameter (budget, or min_thinking for wait_extend); None if it has none."""
        return getattr(self, SWEEPABLE[self.name]) if self.name in SWEEPABLE else None

    @property
    def label(self) -> str:
        """Short tag for tables: 'none', 'budget_force@512', 'wait_extend@256x2', 'think_free'."""
        if self.name in ("budget_force", "truncate"):
            return f"{self.name}@{self.budget}"
        if self.name == "wait_extend":
            return f"wait_extend@{self.min_thinking}x{self.max_waits}"
        return self.name


def check_backend_for(control: ControlConfig, backend: Any) -> None:
    """ValueError unless ``backend`` (an instance or a backend class) can run ``control``."""
    if get_control(control.name).needs_prefix and not supports_prefix(backend):
        name = getattr(backend, "name", getattr(backend, "__name__", type(backend).__name__))
        raise ValueError(f"control {control.name!r} continues a prefix, but backend {name!r} does not support "
                         "continuing from Request.prefix (supports_prefix); use control 'truncate' or 'none'")


def control_sweep(
    control: ControlConfig, backend: Backend, requests: list[Request], sampling: SamplingParams
) -> dict[int, list[Completion]]:
    """Run every point of ``control.budgets`` in one call, sharing generation across points:
    ``{swept value: completions}``, each equal to a separate ``run_control`` at that value."""
    control.validate()
    if not control.budgets:
        raise ValueError("control_sweep needs control.budgets; use run_control for a single setting")
    return get_control(control.name).sweep(control, backend, requests, sampling)


def run_control(
    control: ControlConfig | str, backend: Backend, requests: list[Request], sampling: SamplingParams, **params: Any
) -> list[Completion]:
    """Run ``requests`` under a control (a ControlConfig, or a name plus its parameters)."""
    if isinstance(control, str):
        get_control(control)  # ValueError listing the valid names
        names = {f.name for f in dataclasses.fields(ControlConfig)}
        unknown = set(params) - names
        if unknown:
            raise ValueError(f"unknown control parameters {sorted(unknown)}")
        control = ControlConfig(name=control, **params)
    elif params:
        raise ValueError("pass parameters either in the ControlConfig or as keywords, not both")
    control.validate()
    if control.budgets:
        raise ValueError("control.budgets is a sweep: use control_sweep")
    return get_control(control.name).run(control, backend, requests, sampling)
