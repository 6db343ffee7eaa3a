"""Worker side of a training run: what every DDP rank runs (layer 1 of 3).

- ``engine.Trainer``: the training engine (``run_step``, ``train``, ``state_dict``) with hooks;
- ``hooks``: step logging, epoch metrics, precise batch norm, validation, the report and
  checkpoint to Ray Train;
- ``worker.train_loop_per_worker``: what Ray Train runs: builds the parts and registers hooks;
- ``loader``, ``optim``, ``losses``, ``state``: the data loader, the optimiser and schedule,
  the loss checks, the checkpointed state.

Nothing here imports the driver side (:mod:`pipeline.driver`) or tracking
(:mod:`pipeline.tracking`): the files the workers import are the code a run's identity hashes.
"""
