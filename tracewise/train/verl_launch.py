"""Run verl's PPO trainer on a tracewise config, after checking that the installed verl is one the
config was written for.

verl's reward configuration changed in 0.7.1: the whole-batch reward path (``reward_model.use_reward_loop:
false`` + ``reward_model.reward_manager: batch``) is gone ("Unknown reward manager: batch"), and the
``reward:`` block (``reward.reward_manager``, ``reward.custom_reward_function``) is read instead of the
top-level ``custom_reward_function``. A config written for one side silently loses its reward on the
other (verl < 0.7.1 ignores ``reward:`` and falls back to its default scorer, which raises for
data_source ``tracewise``). So every file in ``configs/verl/`` states the verl it needs on a header line

    # requires: verl<=0.7.0

(any PEP 440 specifier), and this launcher refuses a mismatch before verl starts:

    python -m tracewise.train.verl_launch --config-path $PWD/configs/verl --config-name length_penalty \\
        actor_rollout_ref.model.path=runs/paper/sft-mistral-nemo-r1/model

All arguments go to ``verl.trainer.main_ppo`` unchanged. ``python -m tracewise.train.verl_launch --check
FILE.yaml`` only checks.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

REQUIRES = re.compile(r"^#\s*requires:\s*verl\s*(?P<spec>[<>=!~][^#\n]*?)\s*(?:#.*)?$", re.MULTILINE)


def required(config_file: str | Path) -> str:
    """The verl version specifier a config states on its ``# requires: verl...`` line."""
    text = Path(config_file).read_text(encoding="utf-8")
    m = REQUIRES.search(text)
    if m is None:
        raise ValueError(f"{config_file}: no '# requires: verl<specifier>' line; state the verl version this "
                         "config is written for (the reward configuration differs before and after verl 0.7.1)")
    return m.group("spec").strip()


def installed_verl() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verl")
    except PackageNotFoundError:
        raise ValueError("verl is not installed: pip install 'tracewise[verl]' (pick the version the config "
                         "requires)") from None


def check(config_file: str | Path, installed: str | None = None) -> str:
    """Raise ValueError unless ``installed`` (default: the installed verl) satisfies the config's line."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    spec = required(config_file)
    have = installed if installed is not None else installed_verl()
    if Version(have) not in SpecifierSet(spec):
        others = [p.name for p in Path(config_file).parent.glob("*.yaml")
                  if p != Path(config_file) and _fits(p, have)]
        hint = f"; use {', '.join(sorted(others))} with this verl" if others else ""
        raise ValueError(f"{config_file}: written for verl{spec}, but verl {have} is installed{hint} "
                         f"(or pip install 'verl{spec}')")
    return spec


def _fits(path: Path, have: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        return Version(have) in SpecifierSet(required(path))
    except ValueError:
        return False


def config_file(argv: list[str]) -> Path:
    """The YAML file hydra will load for ``--config-path P --config-name N`` (also ``=`` and -cp/-cn forms)."""
    alias = {"-cp": "--config-path", "-cn": "--config-name"}
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv):
        key, _, value = argv[i].partition("=")
        key = alias.get(key, key)
        if key in ("--config-path", "--config-name"):
            if not value and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            opts[key] = value
        i += 1
    if not opts.get("--config-path") or not opts.get("--config-name"):
        raise ValueError("give --config-path DIR --config-name NAME (e.g. --config-path $PWD/configs/verl "
                         "--config-name length_penalty)")
    name = opts["--config-name"]
    f = Path(opts["--config-path"]) / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not f.is_file():
        raise ValueError(f"{f}: config not found")
    return f


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--check"]:
            for f in argv[1:]:
                print(f"{f}: verl{check(f)} (installed: {installed_verl()}) ok")
            return 0
        check(config_file(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.argv = ["verl.trainer.main_ppo", *argv]
    runpy.run_module("verl.trainer.main_ppo", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
