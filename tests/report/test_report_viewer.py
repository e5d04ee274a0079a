"""Sample viewer: its data (hand cases) and its behaviour in a real headless browser (Debian's chromium)."""

import dataclasses
import json
import re
import shutil
import subprocess
import time

import pytest

from tracewise.core.records import Problem, Sample, Trace
from tracewise.report.viewer import viewer_data, viewer_fragment, viewer_page


def _s(exp, pid, i, ok, level=1, think="let me think", ans="\\boxed{1}", tokens=10):
    return Sample(experiment=exp, benchmark="world", problem_id=pid, sample_idx=i, text=think + ans, thinking=think,
                  answer_text=ans, pred="1" if ok else "2", correct=ok, reason="", n_tokens=tokens,
                  n_thinking_tokens=tokens // 2, n_answer_tokens=tokens - tokens // 2, level=level)


def _hand_set():
    # p1: r1 right 2/2, gpt-oss wrong 2/2 → disagree. p2: both right → agree. p3: both wrong → agree.
    return [_s("r1", "p1", 0, True), _s("r1", "p1", 1, True), _s("gpt-oss", "p1", 0, False), _s("gpt-oss", "p1", 1, False),
            _s("r1", "p2", 0, True, level=2), _s("gpt-oss", "p2", 0, True, level=2),
            _s("r1", "p3", 0, False, level=3), _s("gpt-oss", "p3", 0, False, level=3)]


def test_viewer_data_marks_disagreements_first_and_attaches_gold_and_teachers():
    problems = {"p1": Problem(id="p1", question="What is 1+0?", answer="1")}
    traces = [Trace(problem_id="p1", teacher="r1", text="t", thinking="long", answer_text="\\boxed{1}", n_tokens=50)]
    d = viewer_data(_hand_set(), problems, traces)
    assert [p["id"] for p in d["problems"]] == ["p1", "p2", "p3"]
    assert [p["disagree"] for p in d["problems"]] == [True, False, False]
    p1 = d["problems"][0]
    assert p1["gold"] == "1" and p1["q"] == "What is 1+0?"
    assert len(p1["samples"]) == 4 and p1["teachers"][0]["who"] == "teacher r1 · training trace"
    assert d["experiments"] == ["gpt-oss", "r1"] and d["levels"] == [1, 2, 3]


def test_fragment_cannot_be_closed_by_model_text():
    evil = _s("r1", "p1", 0, True, ans="</script><script>alert(1)</script>")
    frag = viewer_fragment([evil])
    data = frag.split('id="tw-viewer-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["problems"][0]["samples"][0]["ans"].startswith("</script>")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("chromium is not installed: scripts/install.sh installs Debian's chromium package")
    return exe


def _dump(path, fragment: str = "") -> tuple[str, float]:
    t = time.perf_counter()
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=5000", "--dump-dom", f"file://{path}{fragment}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, time.perf_counter() - t


def _attr(dom: str, name: str) -> str:
    m = re.search(rf'id="tw-viewer"[^>]*data-{name}="([^"]*)"', dom)
    assert m, f"viewer root has no data-{name}: did the script run?"
    return m.group(1)


def test_viewer_renders_and_filters_in_a_real_browser(tmp_path):
    page = tmp_path / "viewer.html"
    page.write_text(viewer_page("t", viewer_fragment(_hand_set())), encoding="utf-8")
    dom, _ = _dump(page)  # default: disagreements only → p1
    assert _attr(dom, "ready") == "1" and _attr(dom, "shown") == "1"
    assert 'data-pid="p1"' in dom and 'data-pid="p2"' not in dom
    dom, _ = _dump(page, "#disagree=0")
    assert _attr(dom, "shown") == "3"
    dom, _ = _dump(page, "#disagree=0&verdict=wrong&exp=r1")  # only p3 has a wrong r1 sample
    assert _attr(dom, "shown") == "1" and 'data-pid="p3"' in dom
    dom, _ = _dump(page, "#disagree=0&level=2")
    assert _attr(dom, "shown") == "1" and 'data-pid="p2"' in dom


# ---- the viewer inside report.html (tracewise.report.stage) ---------------------------------------------


def test_reference_traces_are_labelled_and_benchmarks_never_merge():
    samples = [_s("r1", "p1", 0, True), _s("gpt-oss", "p1", 0, False)]
    samples += [dataclasses.replace(s, benchmark="gsm8k") for s in samples[:1]]  # same id, other benchmark
    train = [Trace(problem_id="p1", teacher="r1", text="t", thinking="a", answer_text="b"),
             Trace(problem_id="zz", teacher="r1", text="t", thinking="a", answer_text="b")]  # not evaluated
    ref = [Trace(problem_id="p1", teacher="gpt-oss", text="t", thinking="a", answer_text="b")]
    d = viewer_data(samples, {}, train, ref)
    assert sorted(p["id"] for p in d["problems"]) == ["gsm8k/p1", "world/p1"]
    world = next(p for p in d["problems"] if p["id"] == "world/p1")
    assert len(world["samples"]) == 2 and world["disagree"]
    # training traces first, then references; the trace of the unevaluated problem is not embedded
    assert [t["who"] for t in world["teachers"]] == ["teacher r1 · training trace",
                                                     "teacher gpt-oss · reference (not trained on)"]
    frag = viewer_fragment([_s("<b>x</b>", "p1", 0, True)])  # an experiment label is text, never markup
    assert '<option value="&lt;b&gt;x&lt;/b&gt;">&lt;b&gt;x&lt;/b&gt;</option>' in frag and "<option value=\"<b>" not in frag


def test_problem_sources_run_dirs_files_and_errors(tmp_path):
    from tracewise.report.viewer import load_problem_sources

    # an eval run dir records its problems as a config section; two such dirs are read once
    for name in ("eval-a", "eval-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(
            "model: m\nproblems:\n  source: world\n  split: test\n  world: {n_train: 10, n_test: 5}\n")
    f = tmp_path / "probs.jsonl"
    f.write_text('{"id": "q1", "question": "2+2?", "answer": "4"}\n')
    got = load_problem_sources([str(tmp_path / "eval-a"), str(tmp_path / "eval-b"), str(f)])
    assert len(got) == 6 and got["q1"].answer == "4" and sum(k.startswith("arith-test-") for k in got) == 5
    with pytest.raises(ValueError, match=r"report.problems: .*nope"):
        load_problem_sources([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="problems.jsonl"):
        load_problem_sources([str(tmp_path / "empty")])
    assert load_problem_sources([str(tmp_path / "empty")], strict=False) == {}


def _report_inputs(root, samples):
    from tracewise.core.records import write_records
    from tracewise.evaluate.metrics import summarize, write_summary

    summaries, files = [], []
    for exp in sorted({s.experiment for s in samples}):
        mine = [s for s in samples if s.experiment == exp]
        summaries.append(str(write_summary(root / exp / "summary.json", [summarize(mine, exp, "world", n_boot=20).to_row()])))
        files.append(str(write_records(root / exp / "samples.jsonl", mine)))
    return summaries, files


def test_report_carries_the_viewer_raw_and_it_works_in_a_browser(tmp_path):
    from tracewise.core.records import write_records
    from tracewise.report.stage import ReportConfig, run

    summaries, files = _report_inputs(tmp_path, _hand_set())
    probs = tmp_path / "problems.jsonl"
    probs.write_text("".join(json.dumps({"id": p, "question": f"Question {p} <&>?", "answer": a}) + "\n"
                             for p, a in (("p1", "11"), ("p2", "22"), ("p3", "33"))))
    gen = tmp_path / "generate-x"
    write_records(gen / "traces.jsonl", [Trace(problem_id="p1", teacher="r1", text="t", thinking="TRAINING-TRACE",
                                              answer_text="\\boxed{11}", n_tokens=50)])
    ref = write_records(tmp_path / "ref.jsonl", [Trace(problem_id="p2", teacher="gpt-oss", text="t",
                                                       thinking="REFERENCE-TRACE", answer_text="x", n_tokens=9)])
    out = tmp_path / "report"
    page = run(ReportConfig(out=str(out), summaries=summaries, samples=files, problems=[str(probs)],
                            traces=[str(gen)], reference_traces=[str(ref)]))
    html_text = page.read_text()
    assert html_text.count('<section id="tw-viewer">') == 1 and "&lt;section" not in html_text  # raw, once
    assert "<script" in html_text and not re.search(r'(src|href)="(?!data:|#)', html_text)  # one file
    md = (out / "report.md").read_text()
    assert "## Samples: what the students wrote" in md and "tw-viewer" not in md
    assert "3 problems, 8 samples of 2 students; teacher traces on 2 of the problems: 1 from the training pool, 1 references" in md

    dom, _ = _dump(page)  # opens on the disagreement: p1, its question, gold and training trace
    assert _attr(dom, "ready") == "1" and _attr(dom, "shown") == "1" and 'data-pid="p1"' in dom
    assert "Question p1 &lt;&amp;&gt;?" in dom and "gold: 11" in dom and "TRAINING-TRACE" in dom
    assert "<details><summary>teacher traces (1)" in dom  # closed unless asked
    dom, _ = _dump(page, "#disagree=0&level=2&teachers=1")
    assert _attr(dom, "shown") == "1" and "REFERENCE-TRACE" in dom and "reference (not trained on)" in dom
    assert '<details open=""><summary>teacher traces (1)' in dom
    dom, _ = _dump(page, "#disagree=0&verdict=wrong&exp=gpt-oss")  # gpt-oss is wrong on p1 and p3
    assert _attr(dom, "shown") == "2" and 'data-pid="p1"' in dom and 'data-pid="p3"' in dom

    run(ReportConfig(out=str(tmp_path / "plain"), summaries=summaries, samples=files, viewer=False))
    assert "tw-viewer" not in (tmp_path / "plain" / "report.html").read_text()


def test_full_size_report_from_report_run_opens_fast(tmp_path):
    from tracewise.report.stage import ReportConfig, run

    # 100 problems × 8 samples × 3 students with ~200-token texts, through the report stage itself
    words = " ".join(["Wait, let me double check 12 + 30 = 42."] * 12)
    samples = [_s(e, f"p{p:03d}", i, (p + i + len(e)) % 3 != 0, level=1 + p % 3, think=words, tokens=200)
               for e in ("r1", "gpt-oss", "mix") for p in range(100) for i in range(8)]
    summaries, files = _report_inputs(tmp_path, samples)
    page = run(ReportConfig(out=str(tmp_path / "report"), summaries=summaries, samples=files))
    dom, wall = _dump(page, "#disagree=0")
    assert _attr(dom, "shown") == "100"
    assert float(_attr(dom, "render-ms")) < 2000
    assert wall < 20


def test_only_the_reports_own_fragments_are_inserted_raw(tmp_path):
    from tracewise.report.render import html_fragments, html_page, render_markdown
    from tracewise.report.sections import Section

    secs = [Section("A", "text"), Section("V", "body", html="<div id='raw'>x</div>")]
    frags = html_fragments(secs)
    (marker,) = frags
    md = render_markdown("T", secs, tmp_path)
    assert marker in md and "<div" not in md
    # a copy of the marker and any other comment stay escaped text; the fragment goes in once
    page = html_page("T", md + "\n" + marker + "\n\n<!-- tracewise:html 1 0000 -->\n", tmp_path, frags)
    assert page.count("<div id='raw'>x</div>") == 1 and page.count("&lt;!-- tracewise:html") == 2
    assert "<div id='raw'>" not in html_page("T", md, tmp_path)  # no fragments given: nothing raw
