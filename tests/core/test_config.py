"""config: YAML + dotted overrides into dataclasses; errors name the key and the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tracewise.core.config import build, doc, dump_config, load_config, parse_override
from tracewise.generate.stage import GenerateConfig
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig


@dataclass
class Opt:
    flag: bool = doc("a flag", False)
    ratio: float = doc("a float", 0.5)
    limit: int | None = doc("optional int", None)
    names: list[str] = doc("names", factory=lambda: ["a"])


@dataclass
class Top:
    steps: int = doc("steps", 10)
    opt: Opt = doc("nested", factory=Opt)
    label: str = doc("label", "x")


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_yaml_plus_dotted_overrides(tmp_path: Path) -> None:
    p = _yaml(tmp_path, "sampling:\n  n: 2\n  temperature: 0.9\nproblems:\n  world:\n    n_train: 30\n")
    cfg = load_config(GenerateConfig, p, ["tokenizer=t", "sampling.n=4", "problems.world.levels=[1,2]", "teacher.style=gpt-oss"])
    assert cfg.sampling.n == 4  # override beats YAML
    assert cfg.sampling.temperature == 0.9  # YAML beats default
    assert cfg.problems.world.n_train == 30
    assert cfg.problems.world.levels == [1, 2]
    assert cfg.teacher.style == "gpt-oss"
    # untouched nested defaults survive a partial section
    assert cfg.sampling.max_tokens == 512 and cfg.problems.world.n_test == 200 and cfg.problems.source == "world"
    assert cfg.teacher.error_rate == TeacherConfig().error_rate


def test_overrides_without_file_and_list_forms() -> None:
    cfg = load_config(GenerateConfig, None, ["tokenizer=t", "problems.world.levels=1,3", "teacher.error_rate=[0, 0.5, 1]"])
    assert cfg.problems.world.levels == [1, 3]
    assert cfg.teacher.error_rate == [0.0, 0.5, 1.0]
    assert load_config(GenerateConfig, None, ["tokenizer=t", "problems.world.levels=2"]).problems.world.levels == [2]
    assert load_config(GenerateConfig, None, ["tokenizer=t"]).sampling.n == 1
    with pytest.raises(ValueError, match="tokenizer is required"):
        load_config(GenerateConfig)


def test_parse_override_values() -> None:
    assert parse_override("train.lr=0.001") == (["train", "lr"], 0.001)
    assert load_config(Top, None, ["opt.ratio=1e-3"]).opt.ratio == 0.001  # YAML reads 1e-3 as str; float() fixes it
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("name=") == (["name"], "")
    assert parse_override("expr=a=b") == (["expr"], "a=b")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_override("sampling.n")


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    p = _yaml(tmp_path, "sampling:\n  n: 2\n  temprature: 0.9\n")
    with pytest.raises(ValueError) as ei:
        load_config(GenerateConfig, p)
    msg = str(ei.value)
    assert str(p) in msg and "sampling" in msg and "temprature" in msg and "temperature" in msg  # valid keys listed
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nonexistent'\]"):
        load_config(GenerateConfig, None, ["tokenizer=t", "nonexistent=1"])


def test_wrong_type_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sampling\.n: expected int, got 'abc'"):
        load_config(GenerateConfig, None, ["sampling.n=abc"])
    with pytest.raises(ValueError, match=r"sampling\.n: expected an integer, got 2\.5"):
        load_config(GenerateConfig, None, ["sampling.n=2.5"])
    with pytest.raises(ValueError, match=r"sampling\.n: expected int, got True"):
        load_config(GenerateConfig, None, ["sampling.n=true"])
    with pytest.raises(ValueError, match=r"problems: expected a mapping"):
        load_config(GenerateConfig, None, ["problems=3"])
    with pytest.raises(ValueError, match=r"'sampling' is not a section"):
        load_config(GenerateConfig, None, ["sampling=3", "sampling.n=2"])
    p = _yaml(tmp_path, "sampling:\n  n: [1, 2]\n")
    with pytest.raises(ValueError, match=rf"{p}\.sampling\.n: expected int"):
        load_config(GenerateConfig, p)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found"):
        load_config(GenerateConfig, tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(GenerateConfig, _yaml(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ValueError, match="expected a mapping at top level"):
        load_config(GenerateConfig, _yaml(tmp_path, "- 1\n- 2\n"))
    assert load_config(TeacherConfig, _yaml(tmp_path, "")) == TeacherConfig()  # empty file = defaults


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("yes", True), ("no", False),
                                         ("True", True), ("1", True), ("0", False)])
def test_bool_parsing(text: str, value: bool) -> None:
    assert build(Top, {"opt": {"flag": text}}).opt.flag is value
    assert load_config(Top, None, [f"opt.flag={text}"]).opt.flag is value


def test_bool_rejects_garbage_and_int_rejects_bool() -> None:
    with pytest.raises(ValueError, match=r"opt\.flag: expected true/false, got 'maybe'"):
        load_config(Top, None, ["opt.flag=maybe"])
    with pytest.raises(ValueError, match=r"config\.steps: expected int"):
        build(Top, {"steps": False})


def test_nested_defaults_preserved_and_optional(tmp_path: Path) -> None:
    cfg = load_config(Top, _yaml(tmp_path, "opt:\n  ratio: 2\n"))
    assert cfg.opt == Opt(ratio=2.0) and isinstance(cfg.opt.ratio, float)
    assert cfg.steps == 10 and cfg.label == "x"
    assert load_config(Top, None, ["opt.limit=5"]).opt.limit == 5
    assert load_config(Top, None, ["opt.limit=null"]).opt.limit is None
    with pytest.raises(ValueError, match=r"opt\.limit: expected int"):
        load_config(Top, None, ["opt.limit=many"])
    assert load_config(Top, None, ["label=42"]).label == "42"  # a YAML number is fine as a string
    with pytest.raises(ValueError, match=r"label: expected a string"):
        load_config(Top, None, ["label=[1]"])


def test_validate_runs_on_load() -> None:
    for ov, needle in [
        ("teacher.error_rate=[0.1, 1.5]", "error_rate"),
        ("teacher.style=verbose", "unknown style 'verbose'"),
        ("problems.world.levels=[7]", "levels"),
        ("problems.split=dev", "split"),
        ("backend=nope", "unknown backend"),
    ]:
        with pytest.raises(ValueError, match=needle):
            load_config(GenerateConfig, None, ["tokenizer=t", ov])


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(GenerateConfig, None, ["sampling.n=3", "problems.world.levels=[2]", "tokenizer=tok"])
    again = load_config(GenerateConfig, _yaml(tmp_path, dump_config(cfg)))
    assert again == cfg
    assert load_config(JudgeConfig, None, []) == JudgeConfig() and WorldConfig().levels == [1, 2, 3]


# ---- every shipped config file loads into the class its first line's command uses ----------------

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")
                 if "accelerate" not in p.parts)
EXTRA_COMMANDS = {"quickstart": ("tracewise.studies.quickstart", "QuickstartConfig"), "rl": ("tracewise.train.rl", "RLRunConfig")}


def _first_line_command(path: str) -> tuple[list[str], str, list[str]] | None:
    """(command words, -c file, KEY=VALUE overrides) from a config's first line, e.g.
    ``# accelerate launch ... -m tracewise.cli train sft -c configs/paper/x.yaml dataset=<dir>``;
    None when the line runs another program (verl's Hydra configs)."""
    import re

    line = (REPO / path).read_text().splitlines()[0]
    assert line.startswith("# "), f"{path}: the first line must be the command that runs it"
    words = line[2:].split("(")[0].split()  # a trailing "(...)" is a remark
    starts = [i for i, w in enumerate(words) if w in ("tracewise", "tracewise.cli")]
    if not starts:
        return None
    ci = words.index("-c")
    # "[KEY=VALUE ...]"-style optional arguments are documentation, not part of the command.
    overrides = [w for w in words[ci + 2:] if re.match(r"^[A-Za-z_][\w.]*=", w)]
    return words[starts[-1] + 1 : ci], words[ci + 1], overrides


def _fill_placeholders(value: str, tmp: Path) -> str:
    """``<...>`` parts of a documented command are user paths: stand in existing directories."""
    def one(v: str, i: int) -> str:
        if "<" not in v:
            return v
        (tmp / f"p{i}").mkdir(exist_ok=True)
        return str(tmp / f"p{i}")

    inner = value[1:-1] if value.startswith("[") else value
    return "[" + ",".join(one(v.strip(), i) for i, v in enumerate(inner.split(","))) + "]" if "," in inner \
        else one(value, 0)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_config_loads_with_its_documented_command(path: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    # Run from a scratch checkout, not wherever pytest was started: the repo's configs plus an (empty)
    # runs/quickstart, the state the study configs document as their precondition ("after
    # `tracewise quickstart`"). A fresh clone has no runs/, so this must not depend on the caller's cwd.
    work = tmp_path / "checkout"
    (work / "runs" / "quickstart").mkdir(parents=True)
    (work / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(work)

    from tracewise.cli import STAGES

    command = _first_line_command(path)
    if command is None:
        pytest.skip(f"{path}: not a tracewise config (its first line runs another program)")
    words, cfg_file, overrides = command
    assert cfg_file == path, f"{path}: its first line runs {cfg_file}"
    name = words[-1]
    if words[0] == "study" and name not in STAGES:
        name = f"{name}-study"  # study commands are registered as "<name>-study" stages (cli.py)
    if name not in STAGES and name not in EXTRA_COMMANDS:
        pytest.skip(f"{path}: command {' '.join(words)!r} is not in the CLI yet")
    if len(words) > 1:
        assert words[0] in ("train", "study"), words
    module, cls = STAGES.get(name) or EXTRA_COMMANDS[name]
    cls = getattr(importlib.import_module(module), cls)
    overrides = [k + "=" + _fill_placeholders(v, tmp_path) for k, v in (o.split("=", 1) for o in overrides)]
    cfg = load_config(cls, REPO / path, overrides)
    assert type(cfg) is cls


def test_paper_recipes_match_the_paper() -> None:
    from tracewise.train.sft import SFTRunConfig

    recipes = sorted((REPO / "configs" / "paper").glob("sft_*.yaml"))
    assert len(recipes) == 4
    seen = set()
    for p in recipes:
        first = p.read_text().splitlines()[0]
        # Nemotron-H needs its Mamba-2 mixer as a ZeRO-3 leaf (configs/accelerate/zero3_nemotron_h.yaml).
        accel = "zero3_nemotron_h.yaml" if "nemotron" in p.name else "zero3.yaml"
        assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{accel} -m tracewise.cli "
                                f"train sft -c configs/paper/{p.name} dataset=")
        cfg = load_config(SFTRunConfig, p, [f"dataset={p.parent}"])
        assert (cfg.max_steps, cfg.global_batch, cfg.batch_size) == (3000, 64, 1)
        assert (REPO / cfg.chat_template).is_file()
        seen.add((cfg.model, cfg.experiment.rsplit("-", 1)[-1] if "gpt-oss" not in cfg.experiment else "gpt-oss"))
    assert {m for m, _ in seen} == {"mistralai/Mistral-Nemo-Base-2407", "nvidia/NVIDIA-Nemotron-Nano-12B-v2-Base"}
    assert len(seen) == 4


@pytest.mark.parametrize("name", ["ddp.yaml", "zero2.yaml", "zero3.yaml"])
def test_accelerate_configs_load(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(REPO / "configs" / "accelerate" / name))
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    if name == "ddp.yaml":
        assert str(cfg.distributed_type).endswith("MULTI_GPU")
    else:
        assert str(cfg.distributed_type).endswith("DEEPSPEED")
        assert cfg.deepspeed_config["zero_stage"] == int(name[4])


def test_overriding_one_key_of_a_section_keeps_the_sections_other_defaults():
    """`tracewise quickstart train.batch_size=8` trained 300 steps instead of the quickstart's 1000: a
    section given as a mapping was built on the section class's defaults (TrainSettings: 300 steps),
    not on the field's own default (the quickstart's factory: 1000 steps, 4000 training problems)."""
    from tracewise.studies.quickstart import QuickstartConfig

    cfg = load_config(QuickstartConfig, None, ["train.batch_size=8", "world.seed=1"])
    assert (cfg.train.max_steps, cfg.train.batch_size) == (1000, 8)
    assert (cfg.world.n_train, cfg.world.n_test, cfg.world.seed) == (4000, 100, 1)
    assert load_config(QuickstartConfig, None, ["train.max_steps=5"]).train.batch_size == 16
