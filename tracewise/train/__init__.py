"""Training: supervised distillation of reasoning traces and RL with token-cost-aware rewards."""
