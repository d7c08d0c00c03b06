"""Evaluation and reporting: a model's reward and exact KL to the SFT model (the evaluator, also run in memory while
training), the statistics and fits of the frontier, the comparisons at matched KL, the plots and report.md."""
