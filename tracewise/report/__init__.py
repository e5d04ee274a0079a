"""report.md / report.html / summary.json from eval summaries, plus the sections studies add."""

from tracewise.report import controls  # noqa: F401  (registers the "controls" section)
from tracewise.report.sections import SECTIONS, Section, get_section, register_section, write_section_file
from tracewise.report.stage import ReportConfig, run

__all__ = ["SECTIONS", "ReportConfig", "Section", "get_section", "register_section", "run", "write_section_file"]
