"""Rich progress bars and logging set-up shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


console = Console(stderr=True)


def setup_logging(level: str = "INFO") -> None:
    """Route ``logging`` through rich, once; library chatter stays at WARNING."""
    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        return
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    for noisy in ("httpx", "datasets", "transformers", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_library_bars()


def quiet_library_bars() -> None:
    """Silence transformers'/datasets' own tqdm bars: our rich bars already show the stage's progress."""
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(k)``; shows a bar with count, elapsed and remaining time.

    Disabled when ``TRACEWISE_NO_PROGRESS=1`` (tests) so logs stay readable.
    """
    if os.environ.get("TRACEWISE_NO_PROGRESS") == "1":
        yield lambda k=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda k=1: prog.advance(task, k)
