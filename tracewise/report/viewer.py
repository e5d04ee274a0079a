"""Sample viewer: the students' actual outputs inside the self-contained report.

Numbers say how often a student is right and how long it writes; a reader also wants to *see* it.
The viewer is one HTML fragment (a ``<section>`` with its data as inline JSON and a small script), so
``report.html`` stays one file that opens offline. Per problem it shows the question and gold answer,
each student's samples (thinking span and answer span marked, verdict, tokens) and, when available, the
teachers' traces for that problem. Filters: experiment, level, correct/wrong, and "students disagree"
(on by default, so the first screen shows the problems where the students differ).

Only one page of problems is turned into DOM at a time, so a 100-problem × 8-sample × 3-student report
renders in milliseconds; the filter state can be set from the URL (``#exp=r1&verdict=wrong&level=2&
disagree=0&teachers=1``; ``teachers=1`` opens every teacher-trace list), which is also how the browser
test drives it.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tracewise.core.records import Problem, Sample, Trace, read_records

log = logging.getLogger(__name__)

PAGE_SIZE = 10

_CSS = """#tw-viewer .tw-controls{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:.5em 0}
#tw-viewer .tw-problem{border:1px solid #ccc;border-radius:6px;margin:.8em 0;padding:.5em .8em}
#tw-viewer .tw-q{white-space:pre-wrap;margin:.3em 0}#tw-viewer .tw-gold{font-weight:600}
#tw-viewer .tw-sample{border-left:4px solid #bbb;margin:.4em 0;padding:.2em .6em;font-size:.9em}
#tw-viewer .tw-ok{border-left-color:#2a8a2a}#tw-viewer .tw-bad{border-left-color:#c0392b}
#tw-viewer .tw-think{white-space:pre-wrap;color:#555;background:#f4f4f8}
#tw-viewer .tw-ans{white-space:pre-wrap;background:#eef7ee}
#tw-viewer .tw-meta{color:#666;font-size:.85em}#tw-viewer .tw-teacher{border-left-color:#7a5aa8}"""

# Plain DOM JavaScript, no library: filters → list of matching problem indices → one page rendered.
_JS = r"""(function(){
const D=JSON.parse(document.getElementById('tw-viewer-data').textContent);
const root=document.getElementById('tw-viewer');const list=root.querySelector('.tw-list');
const sel=n=>root.querySelector('[name="'+n+'"]');let page=0;
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function state(){return{exp:sel('exp').value,level:sel('level').value,verdict:sel('verdict').value,disagree:sel('disagree').checked,teachers:sel('teachers').checked};}
function matches(p,st){
  if(st.level!=='all'&&String(p.level)!==st.level)return false;
  if(st.disagree&&!p.disagree)return false;
  const ss=p.samples.filter(s=>st.exp==='all'||s.exp===st.exp);
  if(!ss.length)return false;
  if(st.verdict==='correct')return ss.some(s=>s.ok);
  if(st.verdict==='wrong')return ss.some(s=>!s.ok);
  return true;}
function sample(s,cls){return '<div class="tw-sample '+cls+'"><div class="tw-meta">'+esc(s.who)+' · '+
  (s.ok===null?'':(s.ok?'✔ correct':'✘ wrong')+' · pred '+esc(s.pred)+' · ')+s.tok+' tokens ('+s.think_tok+' thinking)'+
  (s.trunc?' · truncated':'')+'</div>'+(s.think?'<div class="tw-think">'+esc(s.think)+'</div>':'')+
  '<div class="tw-ans">'+esc(s.ans)+'</div></div>';}
function render(){
  const st=state();const hit=D.problems.filter(p=>matches(p,st));
  const pages=Math.max(1,Math.ceil(hit.length/D.page));page=Math.min(page,pages-1);
  const out=[];
  for(const p of hit.slice(page*D.page,(page+1)*D.page)){
    const ss=p.samples.filter(s=>(st.exp==='all'||s.exp===st.exp)&&(st.verdict==='all'||(st.verdict==='correct')===s.ok));
    out.push('<div class="tw-problem" data-pid="'+esc(p.id)+'"><div class="tw-meta">'+esc(p.id)+' · level '+p.level+
      (p.disagree?' · students disagree':'')+'</div><div class="tw-q">'+esc(p.q)+'</div><div class="tw-gold">gold: '+
      esc(p.gold)+'</div>'+ss.map(s=>sample(s,s.ok?'tw-ok':'tw-bad')).join('')+
      (p.teachers.length?'<details'+(st.teachers?' open':'')+'><summary>teacher traces ('+p.teachers.length+')</summary>'+
       p.teachers.map(t=>sample(t,'tw-teacher')).join('')+'</details>':'')+'</div>');}
  list.innerHTML=out.join('');
  root.querySelector('.tw-count').textContent=hit.length+' of '+D.problems.length+' problems · page '+(page+1)+' of '+pages;
  root.dataset.shown=hit.length;root.dataset.renderMs=(performance.now()-t0).toFixed(1);}
const t0=performance.now();
for(const [k,v] of new URLSearchParams(location.hash.slice(1))){const e=sel(k);if(!e)continue;
  if(e.type==='checkbox')e.checked=v==='1';else e.value=v;}
for(const n of ['exp','level','verdict','disagree','teachers'])sel(n).addEventListener('change',()=>{page=0;render();});
root.querySelector('.tw-prev').addEventListener('click',()=>{page=Math.max(0,page-1);render();});
root.querySelector('.tw-next').addEventListener('click',()=>{page+=1;render();});
render();root.dataset.ready='1';})();"""


def _sample_dict(s: Sample) -> dict:
    return {"exp": s.experiment, "who": f"{s.experiment} #{s.sample_idx}", "ok": bool(s.correct), "pred": s.pred or "–",
            "tok": s.n_tokens, "think_tok": s.n_thinking_tokens, "think": s.thinking, "ans": s.answer_text,
            "trunc": s.finish_reason == "length"}


def _trace_dict(t: Trace, reference: bool = False) -> dict:
    who = f"teacher {t.teacher} · " + ("reference (not trained on)" if reference else "training trace")
    return {"exp": f"teacher:{t.teacher}", "who": who, "ok": None, "pred": "", "tok": t.n_tokens,
            "think_tok": t.n_thinking_tokens, "think": t.thinking, "ans": t.answer_text,
            "trunc": t.finish_reason == "length"}


def viewer_data(samples: Sequence[Sample], problems: Mapping[str, Problem] | None = None,
                traces: Iterable[Trace] = (), reference_traces: Iterable[Trace] = ()) -> dict:
    """The viewer's JSON: one entry per evaluated problem, ordered disagreements first, then by id.

    A problem counts as a *disagreement* when the students' majority verdicts differ (one student is
    right on most of its samples, another is not) — the cases a reader most wants to look at.
    ``traces`` are the teachers' training traces; ``reference_traces`` are teacher traces the students
    were not trained on (labelled so), e.g. the embedded teachers run on the test problems.
    """
    problems = problems or {}
    # Samples of two benchmarks never merge, even where their problem ids coincide (then shown "bench/id");
    # questions, golds and traces are matched by problem id.
    by_pid: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        by_pid[(s.benchmark, s.problem_id)].append(s)
    several = len({b for b, _ in by_pid}) > 1
    evaluated = {pid for _, pid in by_pid}
    teach: dict[str, list[tuple[Trace, bool]]] = defaultdict(list)
    for ts, ref in ((traces, False), (reference_traces, True)):
        for t in ts:
            if t.problem_id in evaluated:  # only traces of evaluated problems are embedded
                teach[t.problem_id].append((t, ref))
    out = []
    for (bench, pid), ss in by_pid.items():
        ss.sort(key=lambda s: (s.experiment, s.sample_idx))
        per_exp: dict[str, list[bool]] = defaultdict(list)
        for s in ss:
            per_exp[s.experiment].append(bool(s.correct))
        majority = {e: 2 * sum(v) > len(v) for e, v in per_exp.items()}
        p = problems.get(pid)
        out.append({"id": f"{bench}/{pid}" if several else pid, "level": ss[0].level, "q": p.question if p else "", "gold": p.answer if p else "?",
                    "disagree": len(per_exp) > 1 and len(set(majority.values())) > 1,
                    "samples": [_sample_dict(s) for s in ss],
                    "teachers": [_trace_dict(t, ref) for t, ref in
                                 sorted(teach.get(pid, []), key=lambda x: (x[1], x[0].teacher, x[0].sample_idx))]})
    out.sort(key=lambda p: (not p["disagree"], p["id"]))
    exps = sorted({s.experiment for s in samples})
    levels = sorted({p["level"] for p in out})
    return {"problems": out, "experiments": exps, "levels": levels, "page": PAGE_SIZE}


def viewer_fragment(samples: Sequence[Sample], problems: Mapping[str, Problem] | None = None,
                    traces: Iterable[Trace] = (), reference_traces: Iterable[Trace] = ()) -> str:
    """The ``<section>`` to place in a report's HTML body (style, controls, data and script inline)."""
    data = viewer_data(samples, problems, traces, reference_traces)
    # "</" inside a <script> element would end it early; JSON allows the escaped form.
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    opt = lambda v, label=None: f'<option value="{html.escape(str(v))}">{html.escape(str(label or v))}</option>'  # noqa: E731
    exp_opts = opt("all", "all students") + "".join(opt(e) for e in data["experiments"])
    lvl_opts = opt("all", "all levels") + "".join(opt(lv, f"level {lv}") for lv in data["levels"])
    any_disagree = any(p["disagree"] for p in data["problems"])
    return (
        f'<section id="tw-viewer"><style>{_CSS}</style>'
        '<div class="tw-controls">'
        f'<label>student <select name="exp">{exp_opts}</select></label>'
        f'<label>level <select name="level">{lvl_opts}</select></label>'
        '<label>samples <select name="verdict"><option value="all">all</option><option value="correct">correct</option>'
        '<option value="wrong">wrong</option></select></label>'
        f'<label><input type="checkbox" name="disagree"{" checked" if any_disagree else ""}> students disagree</label>'
        '<label><input type="checkbox" name="teachers"> open teacher traces</label>'
        '<button class="tw-prev">◀</button><button class="tw-next">▶</button><span class="tw-count"></span></div>'
        '<div class="tw-meta"><span class="tw-think">thinking span</span> <span class="tw-ans">answer span</span> '
        '· green bar = correct, red = wrong, purple = teacher trace</div><div class="tw-list"></div>'
        f'<script type="application/json" id="tw-viewer-data">{blob}</script><script>{_JS}</script></section>'
    )


def _problems_of(src: str) -> list[Problem]:
    """Problems of one source: a run dir (its problems.jsonl, else its config.yaml's problems section, as
    an eval run dir records it), a problems JSONL file, or a benchmark name."""
    import yaml

    from tracewise.core.config import build
    from tracewise.data.sources import ProblemsConfig, load_problems, read_problem_file

    path = Path(src)
    if path.is_dir():
        if (path / "problems.jsonl").is_file():
            return read_problem_file(path / "problems.jsonl")
        cfg_file = path / "config.yaml"
        data = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else None
        if not (isinstance(data, dict) and isinstance(data.get("problems"), dict)):
            raise ValueError("a directory without problems.jsonl or a config.yaml with a 'problems' section")
        cfg = build(ProblemsConfig, data["problems"], f"{cfg_file}: problems")
    else:
        cfg = ProblemsConfig(source=src)
    cfg.validate()
    return load_problems(cfg)


def load_problem_sources(sources: Sequence[str], where: str = "report.problems",
                         strict: bool = True) -> dict[str, Problem]:
    """``{problem id: Problem}`` from every source (the first source holding an id wins). With
    ``strict=False`` a source that cannot be read is skipped with a warning (used for the default:
    the run dirs of the samples files)."""
    out: dict[str, Problem] = {}
    seen: set[str] = set()
    for src in sources:
        try:
            key = _source_key(src)
            if key in seen:  # several eval runs on one problem set: read it once
                continue
            seen.add(key)
            for p in _problems_of(src):
                out.setdefault(p.id, p)
        except (ValueError, OSError) as e:
            if strict:
                raise ValueError(f"{where}: {src}: {e}") from None
            log.warning("sample viewer: no questions from %s (%s)", src, e)
    return out


def _source_key(src: str) -> str:
    cfg_file = Path(src) / "config.yaml"
    if Path(src).is_dir() and not (Path(src) / "problems.jsonl").is_file() and cfg_file.is_file():
        import yaml

        data = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
        return json.dumps(data.get("problems") if isinstance(data, dict) else None, sort_keys=True, default=str)
    return str(Path(src).resolve())


def load_trace_sources(sources: Sequence[str], problem_ids: set[str], where: str = "report.traces") -> list[Trace]:
    """Traces of the given problems from generate/ingest run dirs (their traces.jsonl) or traces.jsonl files."""
    out: list[Trace] = []
    for src in sources:
        path = Path(src) / "traces.jsonl" if Path(src).is_dir() else Path(src)
        if not path.is_file():
            raise ValueError(f"{where}: {src}: no traces.jsonl there (a generate or ingest run dir, or the file)")
        out.extend(t for t in read_records(path, Trace) if t.problem_id in problem_ids)
    return out


def viewer_page(title: str, fragment: str) -> str:
    """A standalone HTML page around a fragment (for the browser test and ``--viewer-only`` use)."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body><h1>{html.escape(title)}</h1>{fragment}</body></html>')
