"""Experiments built from taidtron's runs: `paper_mini` (TAID against the baselines at a scale a CPU affords, the
results page docs/results/paper_mini.md)."""
