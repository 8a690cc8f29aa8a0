"""How a network is trained, and nothing else: the training loop and its state
(:mod:`~mit_semseg.engine.trainer`), optimizers and schedule, checkpoints and exact resume, the
distributed process group, reproducibility settings and run control (signals, periodic saves).
Library code: it takes explicit arguments or small typed objects, never the config
(``mit_semseg.cli`` translates it)."""
