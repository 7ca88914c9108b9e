"""Training: :mod:`~mljax.train.loop` (one run: optax step, epochs, early stopping;
``make_train`` for your own ``jit(vmap(...))``), :mod:`~mljax.train.sweep` (seeds ×
hyperparameters as one compiled program, sharded over devices; ``group_stats``),
:mod:`~mljax.train.checkpoint` (orbax checkpoints that resume bit for bit),
:mod:`~mljax.train.tasks` (layer stacks as a ``Task``) and :mod:`~mljax.train.figures`."""
