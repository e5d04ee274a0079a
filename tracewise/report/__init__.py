"""report.md / report.html / summary.json from eval summaries, plus the sections studies add."""

from tracewise.report.stage import ReportConfig, Section, run, write_section_file

__all__ = ["ReportConfig", "Section", "run", "write_section_file"]
