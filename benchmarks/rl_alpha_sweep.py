"""The Arora–Zanette α sweep on the quickstart R1 student, end to end, with wall time per α.

    nice -n 10 python benchmarks/rl_alpha_sweep.py [--config configs/rl/alpha_sweep.yaml] [KEY=VALUE ...]

Runs ``tracewise study rl-alpha`` (train rl + eval per α, then the "RL length penalty" section) and
prints the section's table and reading. Not part of the test suite: on a shared 2-core CPU the
shipped config took 26 min wall on a busy shared machine (5 α × 16 steps of 32 completions, plus 6 evals). Every stage is
stored, so a second run only rewrites the section; raise ``rl.max_steps`` to extend every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/rl/alpha_sweep.yaml"))
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the study config")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TRACEWISE_NO_PROGRESS", "1")

    from tracewise.core.config import load_config
    from tracewise.studies import rl_alpha

    cfg = load_config(rl_alpha.RLAlphaConfig, a.config, a.overrides)
    t0 = time.perf_counter()
    section = rl_alpha.run(cfg)
    wall = time.perf_counter() - t0
    data = json.loads(section.read_text())
    print(data["markdown"])
    print(f"\nsection: {section}  plot: {section.parent / data['images'][0]}  wall: {wall:.0f} s")


if __name__ == "__main__":
    main()
