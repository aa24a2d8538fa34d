"""Applications on top of the core: the ``healthivert`` command line, batch, the background runner.

``cli``: the command and the subcommands a radiologist's work runs through (grade, demo,
batch); ``research``: simulate, bench, train-*; ``options``: engine
choice from the command line; ``batch``: a cohort in worker processes or on dask, resumable
exactly; ``casework``: one case of a batch, the same for every executor; ``cluster``: dask.distributed;
``background``: runs ``healthivert grade`` as a child process with progress and Cancel for a GUI
(the Slicer module). Nothing in the core imports this package.
"""
