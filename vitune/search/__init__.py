"""The search: study files, the per-layer search space, the Optuna study loop, export."""
