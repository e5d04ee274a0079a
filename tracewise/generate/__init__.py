"""Teacher traces: sample them from a backend (``run``) or import existing ones (``ingest``)."""

from tracewise.generate.stage import GenerateConfig, run

__all__ = ["GenerateConfig", "run"]
