"""The ``tracewise`` command line: one thin command per stage, plus ``quickstart``.

Every stage command takes an optional YAML config (``-c``) and dotted ``KEY=VALUE`` overrides,
builds the stage's ``XConfig`` and calls its ``run`` — exactly what the Python API does. Bad input
becomes one clear error line and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from tracewise.core.config import dump_config, load_config
from tracewise.core.logs import console, setup_logging
from tracewise.studies import STUDIES

log = logging.getLogger("tracewise")

app = typer.Typer(
    help="tracewise: distil reasoning from teachers into students that are accurate AND cheap.\n\n"
    "Pipeline: generate → verify → curate → train sft → eval → report. "
    "Each stage takes -c CONFIG.yaml and KEY=VALUE overrides (dotted for nested fields, e.g. sampling.n=8).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Training stages.", no_args_is_help=True)
app.add_typer(train_app, name="train")
study_app = typer.Typer(help="Studies: one command per follow-up experiment; each adds a section to the report.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")

# stage name -> (module, config class, run function name)
STAGES: dict[str, tuple[str, str]] = {
    "init-student": ("tracewise.world.init_stage", "InitStudentConfig"),
    "generate": ("tracewise.generate.stage", "GenerateConfig"),
    "ingest": ("tracewise.generate.ingest", "IngestConfig"),
    "verify": ("tracewise.verify.stage", "VerifyConfig"),
    "curate": ("tracewise.curate.stage", "CurateConfig"),
    "sft": ("tracewise.train.sft", "SFTRunConfig"),
    "eval": ("tracewise.evaluate.stage", "EvalConfig"),
    "report": ("tracewise.report.stage", "ReportConfig"),
    "rl": ("tracewise.train.rl", "RLRunConfig"),
}
# The follow-up studies (tracewise.studies.STUDIES), as stages named "<name>-study" ("rl-alpha" keeps its name).
STAGES.update({(name if name == "rl-alpha" else f"{name}-study"): (module, cls)
               for name, (module, cls, _summary) in STUDIES.items()})


def _fields_help(cls: type | object, prefix: str = "") -> list[str]:
    """One line per config field (nested sections expanded), for ``--help``.

    ``cls`` may be a default instance: a section built by its parent's factory (the quickstart's
    ``world``) shows the factory's values, not the section class's own defaults.
    """
    lines = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if not isinstance(cls, type):
            default = getattr(cls, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            lines.extend(_fields_help(default, name + "."))
            continue
        if default is None and dataclasses.is_dataclass(f.type):
            lines.extend(_fields_help(f.type, name + "."))
            continue
        lines.append(f"{name} (default {default!r}): {f.metadata.get('help', '')}")
    return lines


def _error(e: Exception) -> None:
    """Print ``e`` as ONE line (no wrapping at the terminal width, '[...]' not read as markup); exit 2."""
    console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
    raise typer.Exit(code=2)


LINK_HELP = ("Also point <out>/NAME at the run directory (a symlink), so the next stage can take it by name: "
             "--link traces-r1 ... generations=runs/x/traces-r1. Training with several seeds links NAME-s<seed> each.")


def run_stage(stage: str, config: Optional[Path], overrides: list[str], show: bool = False,
              link: Optional[str] = None) -> Path | None:
    """Load the stage's config from YAML + overrides and run it; errors exit with code 2."""
    module_name, cls_name = STAGES[stage]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    try:
        cfg = load_config(cls, config, overrides)
        if show:
            # Plain stdout, not the rich stderr console: the YAML must be pipeable into a file and
            # must not be re-wrapped or have "[...]" values eaten as markup.
            typer.echo(dump_config(cfg), nl=False)
            return None
        if hasattr(module, "run_seeds"):  # a training stage: one run per replicate seed (cfg.seeds)
            outs = module.run_seeds(cfg)
            names = [link] if len(outs) == 1 else [f"{link}-s{s}" for s in cfg.seed_values()]
        else:
            outs, names = [module.run(cfg)], [link]
        if link:
            from tracewise.core.store import link_run

            for out, name in zip(outs, names):
                console.print(f"[green]{stage}:[/] {link_run(out, name)} -> {Path(out).name}")
    except ValueError as e:
        _error(e)
    if len(outs) > 1:
        for seed, out in zip(cfg.seed_values(), outs):
            console.print(f"[green]{stage} seed {seed}:[/] {out}")
    console.print(f"[green]{stage} done:[/] {' '.join(str(o) for o in outs)}")
    return outs[-1]


def _register(target: typer.Typer, name: str, stage: str, summary: str, command: Callable | None = None) -> None:
    """Add ``name`` running ``stage``; ``command`` replaces the generic one (e.g. to add shortcut options)."""
    module_name, cls_name = STAGES[stage]

    def epilog() -> str:
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except Exception:  # help must never crash on an optional dependency
            return ""
        return "Config keys (YAML or KEY=VALUE):\n\n" + "\n\n".join(_fields_help(cls))

    def generic(
        overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, dotted for nested keys."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
        log_level: str = typer.Option("INFO", "--log-level", help="Logging level."),
        link: Optional[str] = typer.Option(None, "--link", help=LINK_HELP),
    ) -> None:
        setup_logging(log_level)
        run_stage(stage, config, overrides or [], show=print_config, link=link)

    command = command or generic
    command.__doc__ = summary
    target.command(name, help=summary, epilog=epilog())(command)


_register(app, "init-student", "init-student", "Build the tiny embedded student: a BPE tokenizer and a random Llama.")
def _generate(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, dotted for nested keys."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo the samples a finished run recorded as "
                                      "failed (failed.jsonl) in the same run directory (= retry_failed=true)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    log_level: str = typer.Option("INFO", "--log-level", help="Logging level."),
    link: Optional[str] = typer.Option(None, "--link", help=LINK_HELP),
) -> None:
    setup_logging(log_level)
    run_stage("generate", config, ["retry_failed=true"] * retry_failed + list(overrides or []), show=print_config,
              link=link)


_register(app, "generate", "generate", "Generate teacher traces for problems (embedded teachers or any model backend: "
          "hf, vllm, openai).", command=_generate)
_register(app, "ingest", "ingest", "Import real teacher traces (R1 <think>, gpt-oss harmony, Nemotron, plain) as Trace records.")
def _verify(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, dotted for nested keys."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Judge backend (= judge.backend): embedded, hf, vllm, openai."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (= judge.model)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    log_level: str = typer.Option("INFO", "--log-level", help="Logging level."),
    link: Optional[str] = typer.Option(None, "--link", help=LINK_HELP),
) -> None:
    setup_logging(log_level)
    shortcuts = [f"judge.backend={judge}"] * bool(judge) + [f"judge.model={judge_model}"] * bool(judge_model)
    run_stage("verify", config, shortcuts + list(overrides or []), show=print_config, link=link)


_register(app, "verify", "verify", "Check each trace's final answer with math-verify and a judge (LLM judge: --judge hf).",
          command=_verify)
_register(app, "curate", "curate", "Keep problems every teacher got right; build per-teacher and mixed SFT datasets.")
_register(train_app, "sft", "sft", "Supervised fine-tuning with TRL SFTTrainer (completion-only loss, cosine).")
_register(train_app, "rl", "rl", "RL from an SFT model with length-penalised rewards (TRL GRPO/RLOO, 8 samples/prompt).")


def _eval(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, dotted for nested keys."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Budget sweep in one call, e.g. 16,32,64,128 "
                                         "(= control.budgets; budget_force unless --control says otherwise)."),
    control: Optional[str] = typer.Option(None, "--control", help="Test-time control (= control.name): "
                                          "none, budget_force, truncate, wait_extend, think_free."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Benchmarks to evaluate on, e.g. "
                                            "gsm8k,math500,aime24 or JSONL files (= benchmarks): one resumable run "
                                            "dir and one summary row each."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    log_level: str = typer.Option("INFO", "--log-level", help="Logging level."),
    link: Optional[str] = typer.Option(None, "--link", help=LINK_HELP),
) -> None:
    setup_logging(log_level)
    shortcuts = [f"control.budgets={budget}"] * (budget is not None) + [f"control.name={control}"] * bool(control)
    shortcuts += [f"benchmarks={benchmark}"] * bool(benchmark)
    run_stage("eval", config, shortcuts + list(overrides or []), show=print_config, link=link)


_register(app, "eval", "eval", "Sample a model on held-out problems: pass@k, maj@k, tokens, CIs "
          "(several benchmarks: --benchmark gsm8k,math500,aime24; test-time controls: --control, budget sweeps: "
          "--budget 16,32,64).", command=_eval)
_register(app, "report", "report", "Write report.md / report.html / summary.json from eval results.")
for _name in STUDIES:
    _register(study_app, _name, _name if _name == "rl-alpha" else f"{_name}-study", STUDIES[_name][2])


@app.command()
def serve(
    model: str = typer.Option(..., "--model", help="Local HF model directory, or an init-student run directory."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback exposes the model "
                             "and needs --api-key-env (or --insecure)."),
    served_model_name: str = typer.Option("", "--served-model-name", help="Model id clients send (default: dir name)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the model repo's own code."),
    api_key_env: str = typer.Option("", "--api-key-env", help="NAME of an env var whose key (>= 16 characters) "
                                    "clients must send."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without a key (or a short "
                                  "key)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most samples decoded together."),
    batch_wait_ms: float = typer.Option(50.0, "--batch-wait-ms", help="Most a request waits for the others "
                                        "expected to batch with it."),
    max_tokens_cap: int = typer.Option(4096, "--max-tokens-cap", help="Most new tokens a request may ask for "
                                       "(prompt + max_tokens must also fit the model's context)."),
    max_batch_tokens: int = typer.Option(65536, "--max-batch-tokens", help="KV-cache positions (prompt + max_tokens "
                                         "per sample) reserved over all batches decoding at once: bounds memory."),
    max_queue: int = typer.Option(256, "--max-queue", help="Requests in the server at once; more get 429."),
    max_body_bytes: int = typer.Option(2 * 2**20, "--max-body-bytes", help="Largest request body (413 beyond)."),
    max_n: int = typer.Option(16, "--max-n", help="Most samples (n) per request."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send a "
                                         "complete request head (else it is closed: slow-header clients)."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a request has, after its head, to "
                                       "send its whole body (else 408 and the connection is closed: slow-body "
                                       "clients)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = auto: free cores)."),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """OpenAI-compatible server (/v1/models, /v1/completions, /v1/chat/completions, streaming too) for a local model."""
    setup_logging(log_level)
    from tracewise.backends.serve import ServeLimits
    from tracewise.backends.serve import serve as run_server

    limits = ServeLimits(max_tokens_cap=max_tokens_cap, max_batch_tokens=max_batch_tokens, max_queue=max_queue,
                         max_body_bytes=max_body_bytes, max_n=max_n, header_timeout_s=header_timeout,
                         body_timeout_s=body_timeout)
    try:
        run_server(model, port, host, served_model_name=served_model_name, trust_remote_code=trust_remote_code,
                   api_key_env=api_key_env, max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads,
                   log_level=log_level, limits=limits, insecure=insecure)
    except ValueError as e:
        _error(e)


def _quickstart_epilog() -> str:
    try:
        from tracewise.studies.quickstart import QuickstartConfig
    except Exception:  # help must never crash on an optional dependency
        return ""
    return "Config keys (YAML or KEY=VALUE):\n\n" + "\n\n".join(_fields_help(QuickstartConfig))


@app.command(epilog=_quickstart_epilog())
def quickstart(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides of the quickstart config."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/quickstart)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """The paper's experiment in miniature: R1-style vs gpt-oss-style vs 50/50 students, end to end on CPU."""
    setup_logging(log_level)
    from tracewise.studies import quickstart as qs

    ov = list(overrides or [])
    if out:
        ov.append(f"out={out}")
    try:
        cfg = load_config(qs.QuickstartConfig, config, ov)
        if print_config:  # as run_stage does: plain stdout, pipeable into a config file
            typer.echo(dump_config(cfg), nl=False)
            return
        qs.run(cfg)
    except ValueError as e:
        _error(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
