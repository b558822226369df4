"""Training of learned solvers: losses, EMA, the trainer."""
