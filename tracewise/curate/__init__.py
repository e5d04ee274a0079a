"""From verified traces to SFT datasets: filters, decontamination, selection strategies, the curation
table."""

from tracewise.curate.stage import FILTERS, CurateConfig, dataset_path, run

__all__ = ["FILTERS", "CurateConfig", "dataset_path", "run"]
