"""Test-time controls as evaluation axes: budget forcing, "Wait" extension, ThinkFree, truncation.

Every control is implemented *by continuation* through the Backend protocol only: generate until a
budget (``max_tokens``) or until the model closes its thinking, edit the text, and continue with
``Request.prefix``. A control therefore behaves the same on every backend that can continue from a
prefix (``supports_prefix``) and that samples deterministically per ``(seed, request.id, idx)``.

Token accounting (all counts in the backend's tokenizer):

* ``Completion.text`` is the full assistant text after the request's own prefix: generated tokens
  *and* the control's inserted text (``</think>Final Answer:``, ``Wait``, ``<think></think>``), so
  ``parse_completion`` splits it as the model would have seen it.
* ``Completion.n_tokens`` counts **generated** tokens only (EOS included, as backends count it);
  inserted text is prefill, not decode, and is reported separately as ``meta["n_forced_tokens"]``
  (each inserted piece tokenized on its own). Generated tokens that a control threw away (answer
  text after an early ``</think>`` that ``wait_extend`` dropped) are ``meta["n_discarded_tokens"]``.
* ``meta["n_thinking_tokens"]`` is the generated tokens up to and including the first
  ``</think>`` when the model wrote it, excluding it when the control inserted it; without any
  ``</think>`` every generated token is thinking if the text holds ``<think>`` or inserted text
  (a ``Wait``), else none (a plain answer). Callers
  that split thinking from answer should use it (and ``n_tokens - n_thinking_tokens`` for the
  answer) rather than re-tokenizing the text, which would count inserted markers as generated.
* ``meta`` also holds ``control``, the control's parameters, ``forced`` (whether the control
  inserted anything into this sample) and the backend's ``prompt_tokens`` when it reports them.

Seeds: the first generation of every control uses ``sampling`` unchanged, so a control that never
intervenes returns exactly the uncontrolled sample. Each later continuation phase draws from its
own stream, ``sample_seed(sampling.seed, "tracewise.controls/<phase>", 0)`` fed back as the seed, so
it does not replay the random numbers of the phase it continues.

Sweeps (``control_sweep``, ``ControlConfig.budgets``, ``tracewise eval --budget 16,32,64``) run every
budget in one call: ``budget_force`` and ``truncate`` generate each sample once at the largest budget
and cut it for the smaller ones (the first B tokens of a seeded sample do not depend on
``max_tokens``); ``wait_extend`` shares its first generation across ``min_thinking`` values. Each
point equals a separate run with the same seed.

Inputs are validated before anything is generated; every problem is a ``ValueError``.

Modules: ``continuation`` (validation and the generate/continue/cut plumbing every control shares),
``budget`` (``budget_force``, ``truncate`` and their sweeps), ``wait`` (``wait_extend``),
``think_free``, and ``sweep`` (``ControlConfig``, the registry of controls by name, and the eval
stage's entry points ``run_control`` / ``control_sweep``).
"""

from __future__ import annotations

from tracewise.evaluate.controls.budget import budget_force, budget_sweep, truncate, truncate_sweep
from tracewise.evaluate.controls.continuation import supports_prefix
from tracewise.evaluate.controls.sweep import (
    CONTROLS,
    NEEDS_PREFIX,
    SWEEPABLE,
    Control,
    ControlConfig,
    check_backend_for,
    control_sweep,
    get_control,
    register_control,
    run_control,
)
from tracewise.evaluate.controls.think_free import THINK_FREE_PREFIX, think_free
from tracewise.evaluate.controls.wait import wait_extend, wait_sweep

__all__ = [
    "CONTROLS",
    "NEEDS_PREFIX",
    "SWEEPABLE",
    "THINK_FREE_PREFIX",
    "Control",
    "ControlConfig",
    "budget_force",
    "budget_sweep",
    "check_backend_for",
    "control_sweep",
    "get_control",
    "register_control",
    "run_control",
    "supports_prefix",
    "think_free",
    "truncate",
    "truncate_sweep",
    "wait_extend",
    "wait_sweep",
]
