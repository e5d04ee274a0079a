"""Building blocks every stage uses: config dataclasses, records, the run-dir store, text spans and
token counts, logging/progress, secret redaction and seeding. Nothing here imports another
tracewise package."""

from tracewise.core.config import doc, dump_config, load_config
from tracewise.core.records import Problem, Sample, Trace, Verdict, read_records, write_records
from tracewise.core.store import stage_dir

__all__ = ["Problem", "Sample", "Trace", "Verdict", "doc", "dump_config", "load_config", "read_records",
           "stage_dir", "write_records"]
