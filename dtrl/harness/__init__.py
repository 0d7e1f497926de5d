"""Layer 5: the online harness every method runs under (budgets, logging, evaluation, resume), DT rollouts,
pretraining, critics, provenance and the run contract."""
