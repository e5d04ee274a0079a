"""Sample viewer: its data (hand cases) and its behaviour in a real headless browser (Debian's chromium)."""

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
    assert len(p1["samples"]) == 4 and p1["teachers"][0]["who"] == "teacher r1"
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


def test_full_size_report_opens_fast(tmp_path):
    # 100 problems × 8 samples × 3 students, ~200-token texts: the size of a quickstart report.
    words = " ".join(["Wait, let me double check 12 + 30 = 42."] * 12)
    samples = [_s(e, f"p{p:03d}", i, (p + i + len(e)) % 3 != 0, level=1 + p % 3, think=words, tokens=200)
               for e in ("r1", "gpt-oss", "mix") for p in range(100) for i in range(8)]
    page = tmp_path / "big.html"
    page.write_text(viewer_page("big", viewer_fragment(samples)), encoding="utf-8")
    dom, wall = _dump(page, "#disagree=0")
    assert _attr(dom, "shown") == "100"
    assert float(_attr(dom, "render-ms")) < 2000
    assert wall < 20  # whole browser start + load + render + dump, generous for a loaded 2-core machine
