"""Ingest stage: every trace format → Trace records in generate's layout, errors, resume, real traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracewise.data.benchmarks import data_dir
from tracewise.core.config import load_config
from tracewise.generate.ingest import IngestConfig, label, render_harmony, run, split_messages, split_text
from tracewise.core.records import Problem, Trace, read_records
from tracewise.core.tokens import load_tokenizer, span_counts
from tracewise.core.text import parse_completion

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ingest"


def _real_traces() -> Path:
    try:
        return data_dir() / "traces" / "r1distill_math_thought_anchors.jsonl"
    except ValueError:  # no data directory at all
        return Path("/nonexistent")


REAL_TRACES = _real_traces()


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    """A tiny student tokenizer trained on the fixture texts (token counts only need to be consistent)."""
    from tracewise.world.student import build_tokenizer

    corpus = [p.read_text() for p in sorted(FIXTURES.glob("*.jsonl"))] * 3
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    build_tokenizer(corpus, 300).save_pretrained(path)
    return str(path)


def ingest(tmp_path: Path, tokenizer_path: str, name: str, **kw) -> tuple[Path, dict[str, Trace], dict[str, Problem]]:
    d = run(IngestConfig(out=str(tmp_path), path=str(FIXTURES / name), tokenizer=tokenizer_path, **kw))
    traces = {t.key: t for t in read_records(d / "traces.jsonl", Trace)}
    problems = {p.id: p for p in read_records(d / "problems.jsonl", Problem)}
    return d, traces, problems


def test_r1_format_spans_truncation_and_samples(tmp_path, tokenizer_path):
    d, traces, problems = ingest(tmp_path, tokenizer_path, "r1.jsonl")
    assert sorted(traces) == [f"DeepSeek-R1|r1-a|{i}" for i in range(3)] + [
        "DeepSeek-R1|r1-b|0", "DeepSeek-R1|r1-c|0", "DeepSeek-R1|r1-d|0"]
    a = traces["DeepSeek-R1|r1-a|0"]
    assert (a.thinking, a.answer_text, a.format, a.finish_reason) == (
        "3 plus 4 is 7.", "The sum is \\boxed{7}.", "think", "stop")
    assert a.meta["is_correct"] is True and a.meta["ingest_format"] == "r1"
    b = traces["DeepSeek-R1|r1-b|0"]  # the template opened <think>
    assert (b.thinking, b.answer_text) == ("Okay, 10 minus 6 is 4.", "\\boxed{4}")
    c = traces["DeepSeek-R1|r1-c|0"]  # cut off inside the thinking
    assert (c.finish_reason, c.answer_text, c.thinking) == ("length", "", "Let me multiply 2 by 9, that is")
    assert traces["DeepSeek-R1|r1-d|0"].finish_reason == "length"  # from the finish_reason column
    assert traces["DeepSeek-R1|r1-a|2"].answer_text == "\\boxed{8}"
    assert problems["r1-d"].answer == "25" and len(problems) == 4  # numeric gold → string; r1-a only once
    tok = load_tokenizer(tokenizer_path)
    assert (a.n_tokens, a.n_thinking_tokens, a.n_answer_tokens) == span_counts(tok, a.thinking, a.answer_text)
    assert c.n_tokens == span_counts(tok, c.thinking, "", closed=False)[0]
    done = json.loads((d / "DONE").read_text())
    assert done == {"formats": {"think": 6}, "n_problems": 4, "n_traces": 6, "n_truncated": 2,
                    "teachers": ["DeepSeek-R1"]}


def test_r1_explicit_format_reads_tagless_text_as_cut_off_thinking():
    parsed = split_text("Hmm, 2+2 is", "r1", "f:1")
    assert (parsed.thinking, parsed.answer, parsed.truncated) == ("Hmm, 2+2 is", "", True)
    assert split_text("Hmm, 2+2 is", "auto", "f:1").format == "plain"  # auto cannot know


def test_harmony_rendered(tmp_path, tokenizer_path):
    _, traces, problems = ingest(tmp_path, tokenizer_path, "harmony.jsonl", teacher="gpt-oss-120b")
    a, b, c = (traces[f"gpt-oss-120b|h-{x}|0"] for x in "abc")
    assert (a.thinking, a.answer_text, a.format, a.finish_reason) == (
        "12 divided by 3 is 4.", "The answer is \\boxed{4}.", "harmony", "stop")
    assert (b.thinking, b.answer_text, b.finish_reason) == ("9+9 is", "", "length")
    assert (c.thinking, c.answer_text) == ("7 minus 2 is 5.", "\\boxed{5}")
    assert problems["h-a"].question == "What is 12/3?"  # 'question' column when there is no 'problem'


def test_harmony_explicit_format_refuses_other_text_but_keeps_cut_off_stripped_text():
    with pytest.raises(ValueError, match=r"f\.jsonl:3: completion is not harmony"):
        split_text("<think>x</think>y", "harmony", "f.jsonl:3")
    assert split_text("analysis so far", "harmony", "f:1").truncated


def test_harmony_messages(tmp_path, tokenizer_path):
    _, traces, problems = ingest(tmp_path, tokenizer_path, "harmony_messages.jsonl", teacher="gpt-oss-20b")
    a, b, c = (traces[f"gpt-oss-20b|hm-{x}|0"] for x in "abc")
    assert (a.thinking, a.answer_text, a.format, a.finish_reason) == ("2+2 is 4.", "\\boxed{4}", "harmony", "stop")
    assert (b.thinking, b.answer_text) == ("3+3 = 6.", "The answer is \\boxed{6}.")
    assert (c.thinking, c.answer_text, c.finish_reason) == ("5+5, let me", "", "length")
    assert problems["hm-b"].question == "What is 3+3?"  # taken from the user turn
    assert a.meta["ingest_format"] == "harmony_messages"
    for t in (a, b, c):  # the stored text is harmony that verify re-parses to the same spans
        p = parse_completion(t.text)
        assert (p.thinking, p.answer, p.truncated) == (t.thinking, t.answer_text, t.finish_reason == "length")


def test_nemotron(tmp_path, tokenizer_path):
    _, traces, problems = ingest(tmp_path, tokenizer_path, "nemotron.jsonl", format="nemotron")
    assert {t.teacher for t in traces.values()} == {"DeepSeek-R1-0528"}  # from the 'generator' column
    a, b, c, d = (traces[f"DeepSeek-R1-0528|n-{x}|0"] for x in "abcd")
    assert (a.thinking, a.answer_text, a.finish_reason, a.meta["reasoning"]) == (
        "3 times 4 is 12.", "So \\boxed{12}.", "stop", "on")
    assert (b.thinking, b.answer_text, b.format, b.meta["reasoning"]) == ("", "3*3 = \\boxed{9}.", "plain", "off")
    assert (c.thinking, c.answer_text, c.meta["reasoning"]) == ("", "\\boxed{8}", "off")  # flag from the system prompt
    assert (d.finish_reason, d.thinking) == ("length", "3 times 7, hmm")
    assert problems["n-a"].answer == "12" and problems["n-a"].question == "What is 3*4?"
    assert a.meta["category"] == "math"


def test_nemotron_auto_detects_and_no_gold_column(tmp_path, tokenizer_path):
    _, traces, problems = ingest(tmp_path, tokenizer_path, "nemotron.jsonl", fields={"answer": ""})
    assert traces["DeepSeek-R1-0528|n-a|0"].meta["ingest_format"] == "nemotron"
    assert {p.answer for p in problems.values()} == {""}


def test_nemotron_explicit_refuses_a_bad_reasoning_flag(tmp_path, tokenizer_path):
    row = {"uuid": "n", "reasoning": "medium", "expected_answer": "1",
           "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{1}"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: reasoning flag must be 'on' or 'off'"):
        run(IngestConfig(out=str(tmp_path), path=str(path), tokenizer=tokenizer_path, format="nemotron"))


def test_plain(tmp_path, tokenizer_path):
    _, traces, _ = ingest(tmp_path, tokenizer_path, "plain.jsonl", format="plain")
    a = traces["Qwen2.5-Math-7B-Instruct|p-a|0"]
    assert (a.thinking, a.answer_text, a.format) == ("", "6 plus 1 is 7, so the answer is \\boxed{7}.", "plain")


def test_render_harmony_round_trips_through_the_text_parser():
    msgs = [{"role": "user", "channel": None, "content": "q", "thinking": ""},
            {"role": "assistant", "channel": "analysis", "content": "think", "thinking": ""},
            {"role": "assistant", "channel": "final", "content": "42", "thinking": ""}]
    text, parsed = split_messages(msgs, "harmony_messages", "f:1")
    assert text == render_harmony([msgs[1], msgs[2]])
    reparsed = parse_completion(text)
    assert (parsed.thinking, parsed.answer) == ("think", "42") == (reparsed.thinking, reparsed.answer)


def test_bad_inputs_name_file_line_and_field(tmp_path, tokenizer_path):
    with pytest.raises(ValueError, match=r"missing_field\.jsonl:2: missing field answer/expected_answer/gold"):
        ingest(tmp_path, tokenizer_path, "missing_field.jsonl")
    with pytest.raises(ValueError, match=r"r1\.jsonl:1: missing field 'prompt' for 'question'"):
        ingest(tmp_path, tokenizer_path, "r1.jsonl", fields={"question": "prompt"})
    with pytest.raises(ValueError, match=r"malformed\.jsonl:2: malformed JSON"):
        ingest(tmp_path, tokenizer_path, "malformed.jsonl")
    with pytest.raises(ValueError, match=r"harmony\.jsonl:1: no completion .* or messages column"):
        ingest(tmp_path, tokenizer_path, "harmony.jsonl", fields={"completion": "text"})
    with pytest.raises(ValueError, match="ingest.format: unknown format 'r2'"):
        ingest(tmp_path, tokenizer_path, "r1.jsonl", format="r2")
    with pytest.raises(ValueError, match=r"ingest.fields: unknown key\(s\) \['prompt'\]"):
        ingest(tmp_path, tokenizer_path, "r1.jsonl", fields={"prompt": "x"})
    with pytest.raises(ValueError, match="does_not_exist.jsonl: file not found"):
        ingest(tmp_path, tokenizer_path, "does_not_exist.jsonl")
    with pytest.raises(ValueError, match="ingest.teacher"):
        ingest(tmp_path, tokenizer_path, "r1.jsonl", teacher="a/b")


def test_conflicting_gold_for_one_problem_id_is_an_error(tmp_path, tokenizer_path):
    rows = [{"id": "q", "problem": "1+1?", "answer": "2", "completion": "\\boxed{2}"},
            {"id": "q", "problem": "1+1?", "answer": "3", "completion": "\\boxed{2}"}]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"dup\.jsonl:2: problem id 'q' has a different .*dup\.jsonl:1"):
        run(IngestConfig(out=str(tmp_path), path=str(path), tokenizer=tokenizer_path))


def test_rerun_is_a_noop_and_an_interrupted_run_resumes_identically(tmp_path, tokenizer_path):
    d, _, _ = ingest(tmp_path, tokenizer_path, "r1.jsonl")
    final = (d / "traces.jsonl").read_bytes()
    stamp = (d / "traces.jsonl").stat().st_mtime_ns
    assert run(IngestConfig(out=str(tmp_path), path=str(FIXTURES / "r1.jsonl"), tokenizer=tokenizer_path)) == d
    assert (d / "traces.jsonl").stat().st_mtime_ns == stamp  # nothing rewritten
    # Simulate a crash: two traces logged (one torn mid-line), no final files, no DONE.
    lines = final.decode().splitlines(keepends=True)
    for f in ("DONE", "traces.jsonl", "problems.jsonl"):
        (d / f).unlink()
    (d / "traces.partial.jsonl").write_text(lines[3] + lines[0] + lines[1][:20])
    assert run(IngestConfig(out=str(tmp_path), path=str(FIXTURES / "r1.jsonl"), tokenizer=tokenizer_path)) == d
    assert (d / "traces.jsonl").read_bytes() == final
    assert not (d / "traces.partial.jsonl").exists()


def test_limit_and_config_from_yaml(tmp_path, tokenizer_path):
    cfg_file = tmp_path / "ingest.yaml"
    cfg_file.write_text(f"path: {FIXTURES / 'r1.jsonl'}\ntokenizer: {tokenizer_path}\nlimit: 2\n"
                        "fields:\n  teacher: nope\n")  # the configured label wins over any column
    cfg = load_config(IngestConfig, cfg_file, [f"out={tmp_path}", "teacher=r1"])
    traces = read_records(run(cfg) / "traces.jsonl", Trace)
    assert [t.key for t in traces] == ["r1|r1-a|0", "r1|r1-b|0"]


def test_parquet_input(tmp_path, tokenizer_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "harmony_messages.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hm.parquet")
    d = run(IngestConfig(out=str(tmp_path), path=str(tmp_path / "hm.parquet"), tokenizer=tokenizer_path))
    traces = read_records(d / "traces.jsonl", Trace)
    assert [(t.teacher, t.problem_id, t.answer_text) for t in traces][:2] == [
        ("hm", "hm-a", "\\boxed{4}"), ("hm", "hm-b", "The answer is \\boxed{6}.")]


def test_label():
    assert label("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B") == "DeepSeek-R1-Distill-Qwen-14B"
    assert label("my model (v2)") == "my-model-v2"
    assert label("__x") == "x"


@pytest.mark.skipif(not REAL_TRACES.is_file(), reason="shared data directory not present")
def test_real_r1_distill_traces_out_of_the_box(tmp_path, tokenizer_path):
    from tracewise.core.records import Verdict
    from tracewise.verify.stage import VerifyConfig
    from tracewise.verify.stage import run as verify_run

    d = run(IngestConfig(out=str(tmp_path), path=str(REAL_TRACES), tokenizer=tokenizer_path))
    traces = read_records(d / "traces.jsonl", Trace)
    problems = {p.id: p for p in read_records(d / "problems.jsonl", Problem)}
    rows = {r["id"]: r for r in map(json.loads, REAL_TRACES.read_text().splitlines())}
    # 2 teachers x 10 MATH problems x {correct, incorrect}: grouped by the problem both teachers answered.
    assert len(traces) == 40 and sorted(problems)[:2] == ["problem_1591", "problem_2189"] and len(problems) == 10
    assert {t.teacher for t in traces} == {"DeepSeek-R1-Distill-Llama-8B", "DeepSeek-R1-Distill-Qwen-14B"}
    assert sorted({t.sample_idx for t in traces}) == [0, 1]
    for t in traces:
        row = rows[t.meta["id"]]  # the row's own id rides along in meta
        # The file carries its own split; ours must agree with it (modulo surrounding whitespace).
        assert (t.thinking, t.answer_text) == (row["reasoning"].strip(), row["response"].strip())
        assert t.finish_reason == "stop" and t.n_thinking_tokens > 100 and t.n_answer_tokens > 5
        assert t.meta["is_correct"] == row["is_correct"]
        assert problems[t.problem_id].level == 5 and problems[t.problem_id].answer == row["answer"]
    v = verify_run(VerifyConfig(out=str(tmp_path), generations=[str(d)], methods=["math_verify"]))
    verdicts = {x.key.split("|", 1)[1]: x for x in read_records(v / "verdicts.jsonl", Verdict)}
    # math-verify agrees with the dataset's own correctness labels on every trace.
    assert all(verdicts[t.key].correct == t.meta["is_correct"] for t in traces)


@pytest.mark.skipif(not REAL_TRACES.is_file(), reason="shared data directory not present")
def test_real_traces_one_problem_per_row_when_mapped(tmp_path, tokenizer_path):
    d = run(IngestConfig(out=str(tmp_path), path=str(REAL_TRACES), tokenizer=tokenizer_path, fields={"id": "id"}))
    assert len(read_records(d / "problems.jsonl", Problem)) == 40
    assert {t.sample_idx for t in read_records(d / "traces.jsonl", Trace)} == {0}


def test_hf_dataset_name_offline_is_a_clear_error(tmp_path, tokenizer_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail now, not after retries
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"open-r1/OpenR1-Math-220k: not a local file.*needs network access"):
        run(IngestConfig(out=str(tmp_path), path="open-r1/OpenR1-Math-220k", tokenizer=tokenizer_path, limit=5))


@pytest.fixture(scope="module")
def char_tokenizer_path(tmp_path_factory) -> str:
    """One token per character, <think> and </think> one token each: counts can be done by hand."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|end|>", "<think>", "</think>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.add_special_tokens(specials)
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>",
                                  additional_special_tokens=specials[2:])
    path = tmp_path_factory.mktemp("chartok") / "tokenizer"
    tok.save_pretrained(path)
    return str(path)


def test_token_counts_match_a_hand_count(tmp_path, char_tokenizer_path):
    """Independent of span_counts: characters counted by hand in the fixture's r1-a and r1-c."""
    _, traces, _ = ingest(tmp_path, char_tokenizer_path, "r1.jsonl")
    a = traces["DeepSeek-R1|r1-a|0"]
    # thinking "3 plus 4 is 7." = 14 chars, + <think> + </think> = 16;
    # answer "The sum is \boxed{7}." = 11 + 9 + 1 = 21 chars, + EOS = 22; total 38.
    assert (a.thinking, a.answer_text) == ("3 plus 4 is 7.", "The sum is \\boxed{7}.")
    assert (a.n_tokens, a.n_thinking_tokens, a.n_answer_tokens) == (38, 16, 22)
    c = traces["DeepSeek-R1|r1-c|0"]
    # cut off: "Let me multiply 2 by 9, that is" = 31 chars, + <think> (no </think>, no answer, no EOS) = 32.
    assert c.thinking == "Let me multiply 2 by 9, that is"
    assert (c.n_tokens, c.n_thinking_tokens, c.n_answer_tokens) == (32, 32, 0)


# ---- the paper's R1 source: Nemotron-Post-Training-Dataset-v1 (no gold), reasoning=on, gold join ----

NEMOTRON_INSTRUCTION = "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}."


def _nemotron_row(uuid: str, problem: str, answer: str, reasoning: str = "on") -> dict:
    """A row shaped like nvidia/Nemotron-Post-Training-Dataset-v1 (split math): no gold column."""
    think = f"Let me work on it. The value is {answer}." if reasoning == "on" else ""
    return {"uuid": uuid, "license": "CC BY 4.0", "generator": "DeepSeek-R1-0528", "version": "v1",
            "category": "math", "reasoning": reasoning,
            "messages": [{"role": "system", "content": ""},
                         {"role": "user", "content": f"{NEMOTRON_INSTRUCTION}\n\n{problem}"},
                         {"role": "assistant", "content": f"<think>{think}</think>\nSo it is \\boxed{{{answer}}}."}],
            "metadata": "{}"}


def _omr_row(problem: str, answer: str, problem_type: str = "has_answer_extracted") -> dict:
    """A row shaped like nvidia/OpenMathReasoning (split cot): the problem without the instruction line."""
    return {"expected_answer": answer, "problem_type": problem_type, "problem_source": "aops_c4_high_school_math",
            "generation_model": "DeepSeek-R1", "pass_rate_72b_tir": "0.5", "problem": problem,
            "generated_solution": "<think>...</think> \\boxed{" + answer + "}", "inference_mode": "cot"}


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PROBLEMS = {  # problem text -> (R1's answer, the reference answer)
    "What is $2+3$?": ("5", "5"),
    "Compute  $7 \\times 6$.": ("42", "42"),
    "Find $x$ if $x^2 = 49$ and $x<0$.": ("7", "-7"),  # R1 wrong here
    "How many primes are below 10?": ("4", "4"),
    "A problem with no reference answer.": ("1", None),
    "An ambiguous reference.": ("3", "3|4"),  # two different expected answers in the gold data
    "A converted proof.": ("0", "0!proof"),
}


def _nemotron_files(tmp_path: Path) -> tuple[str, str]:
    rows, gold = [], []
    for i, (problem, (r1, ref)) in enumerate(PROBLEMS.items()):
        rows.append(_nemotron_row(f"u{i}", problem, r1))
        if ref is None:
            continue
        if ref.endswith("!proof"):
            gold.append(_omr_row(problem, ref[:-6], "converted_proof"))
            continue
        for k, a in enumerate(ref.split("|")):
            # OpenMathReasoning repeats a problem once per solution; whitespace may differ.
            gold.append(_omr_row(" ".join(problem.split()) + (" " if k else ""), a))
            gold.append(_omr_row(problem, a))
    rows.append(_nemotron_row("u-off", "What is $1+1$?", "2", reasoning="off"))
    return _write_jsonl(tmp_path / "nemotron_math.jsonl", rows), _write_jsonl(tmp_path / "omr.jsonl", gold)


def test_nemotron_rows_get_gold_joined_by_problem_text_and_reasoning_off_is_dropped(tmp_path, tokenizer_path):
    """The paper's R1 traces have no gold: without a join every verdict is unparseable_gold."""
    from tracewise.verify.stage import VerifyConfig, run as verify

    traces, gold = _nemotron_files(tmp_path)
    run_dir = run(load_config(IngestConfig, None, [
        f"path={traces}", f"tokenizer={tokenizer_path}", f"out={tmp_path / 'runs'}", "format=nemotron", "teacher=r1",
        "reasoning=on", "gold.source=join", f"gold.path={gold}", "gold.where={problem_type: has_answer_extracted}"]))
    problems = {p.id: p for p in read_records(run_dir / "problems.jsonl", Problem)}
    # Joined: u0, u1, u2, u3. No reference (u4), ambiguous (u5) and proof-only (u6): dropped. u-off: reasoning off.
    assert {pid: p.answer for pid, p in problems.items()} == {"u0": "5", "u1": "42", "u2": "-7", "u3": "4"}
    assert problems["u1"].question.startswith(NEMOTRON_INSTRUCTION)  # the prompt the teacher saw is kept
    done = json.loads((run_dir / "DONE").read_text())
    assert (done["rows_read"], done["rows_kept"], done["dropped_reasoning_off"], done["dropped_no_gold"]) == (8, 4, 1, 3)
    assert done["gold_ambiguous_keys"] == 1
    traces_ = read_records(run_dir / "traces.jsonl", Trace)
    assert all(t.meta["reasoning"] == "on" and t.teacher == "r1" for t in traces_)
    vdir = verify(VerifyConfig(out=str(tmp_path / "runs"), generations=[str(run_dir)], methods=["math_verify"],
                               verify_workers=0))
    verdicts = {json.loads(line)["problem_id"]: json.loads(line) for line in (vdir / "verdicts.jsonl").open()}
    assert {pid: v["correct"] for pid, v in verdicts.items()} == {"u0": True, "u1": True, "u2": False, "u3": True}
    # `limit` counts rows kept, not rows read.
    two = run(load_config(IngestConfig, None, [
        f"path={traces}", f"tokenizer={tokenizer_path}", f"out={tmp_path / 'runs2'}", "format=nemotron",
        "reasoning=on", "gold.source=join", f"gold.path={gold}", "limit=2"]))
    assert len(read_records(two / "problems.jsonl", Problem)) == 2


def test_agreement_mode_curates_the_problems_both_teachers_answer_alike(tmp_path, tokenizer_path):
    """No reference at all: R1's own answer is the gold; a second teacher (gpt-oss harmony traces for the
    same problems) verified against it is 'correct' iff the two answers are equivalent."""
    from tracewise.curate import CurateConfig, run as curate
    from tracewise.verify.stage import VerifyConfig, run as verify

    traces, _ = _nemotron_files(tmp_path)
    r1 = run(load_config(IngestConfig, None, [
        f"path={traces}", f"tokenizer={tokenizer_path}", f"out={tmp_path / 'runs'}", "format=nemotron", "teacher=r1",
        "reasoning=on", "gold.source=teacher"]))
    problems = {p.id: p for p in read_records(r1 / "problems.jsonl", Problem)}
    assert {pid: p.answer for pid, p in problems.items()} == {f"u{i}": a for i, (a, _) in enumerate(PROBLEMS.values())}
    assert problems["u0"].meta["gold_source"] == "teacher:r1"
    # gpt-oss answers: equal to R1's on u0 (as 5.0), u1, u3, u4; different on u2, u5; none on u6 (cut off).
    oss_answers = {"u0": "5.0", "u1": "42", "u2": "-7", "u3": "4", "u4": "1", "u5": "4"}
    rows = [{"uuid": pid, "problem": problems[pid].question,
             "completion": f"<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"
                           f"\\boxed{{{oss_answers[pid]}}}<|return|>" if pid in oss_answers else
                           "<|channel|>analysis<|message|>Still thinking"} for pid in sorted(problems)]
    oss_file = _write_jsonl(tmp_path / "gpt_oss.jsonl", rows)
    # The second teacher's problems take the first's gold by problem text (its problems.jsonl is a gold dataset).
    oss = run(load_config(IngestConfig, None, [
        f"path={oss_file}", f"tokenizer={tokenizer_path}", f"out={tmp_path / 'runs'}", "format=harmony",
        "teacher=gpt-oss", "gold.source=join", f"gold.path={r1 / 'problems.jsonl'}", "gold.missing=keep"]))
    assert {p.id: p.answer for p in read_records(oss / "problems.jsonl", Problem)} == \
        {pid: p.answer for pid, p in problems.items()}
    vdir = verify(VerifyConfig(out=str(tmp_path / "runs"), generations=[str(r1), str(oss)], methods=["math_verify"],
                               verify_workers=0))
    cdir = curate(CurateConfig(out=str(tmp_path / "runs"), generations=[str(r1), str(oss)], verdicts=str(vdir),
                               filter="math_verify", mix=False))
    from datasets import load_from_disk

    kept = sorted(load_from_disk(str(cdir / "datasets" / "gpt-oss"))["problem_id"])
    assert kept == ["u0", "u1", "u3", "u4"]  # R1 and gpt-oss agree; u2 and u5 disagree, u6 was cut off


def test_gold_and_reasoning_settings_are_checked(tmp_path, tokenizer_path):
    traces, _ = _nemotron_files(tmp_path)
    base = [f"path={traces}", f"tokenizer={tokenizer_path}", f"out={tmp_path}"]
    for overrides, needle in [(["reasoning=maybe"], "ingest.reasoning"), (["gold.source=oracle"], "ingest.gold.source"),
                              (["gold.source=join"], "gold.path is required"),
                              (["gold.source=teacher", "fields.answer=x"], "both say where the gold comes from")]:
        with pytest.raises(ValueError, match=needle):
            load_config(IngestConfig, None, base + overrides)
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"id": "a", "problem": "1+1?", "completion": "\\boxed{2}",
                                                     "answer": "2"}])
    with pytest.raises(ValueError, match="needs each row's reasoning flag"):
        run(load_config(IngestConfig, None, [f"path={plain}", f"tokenizer={tokenizer_path}", f"out={tmp_path}",
                                             "reasoning=on"]))
