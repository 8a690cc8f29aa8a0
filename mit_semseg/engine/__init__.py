"""Running models: training loop and state, checkpoints, inference, evaluation, precision and
the distributed process group. Library code: it takes explicit arguments or small typed objects,
never the config (``mit_semseg.cli`` translates it)."""
