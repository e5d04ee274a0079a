"""Follow-up studies: each one command (`tracewise study NAME`) that writes a report section."""
