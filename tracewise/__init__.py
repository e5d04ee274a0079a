"""tracewise: train LLMs to reason efficiently — accuracy next to token cost, stage by stage."""

__version__ = "0.1.0"
# Part of every stage's run-dir hash: bump it when a change alters what a stage writes, so old
# run dirs are not silently reused.
ARTIFACT_VERSION = "1"
