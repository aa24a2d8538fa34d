"""Applications on top of the core: the ``healthivert`` command line, batch, the background runner.

``cli``: the subcommands (grade, demo, batch, simulate, bench, train-*); ``options``: engine
choice from the command line; ``batch``: many cases in worker processes, resumable;
``background``: runs ``healthivert grade`` as a child process with progress and Cancel for a GUI
(the Slicer module). Nothing in the core imports this package.
"""
