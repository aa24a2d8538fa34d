"""Files written for one graded case: report.json and report.csv, volumes, PNG figures, index.html.

``report``: :func:`write_outputs`, the one entry point, writes everything atomically, the
completion marker last, after removing an earlier run's outputs from the folder; ``tables``:
the JSON and CSV records and the terminal summary; ``volumes``: NIfTI volumes on the input grid;
``figures``: sagittal, axial height-loss, AP-profile and counterfactual figures (matplotlib, no
pyplot); ``html``: the report page. The only core package that imports matplotlib.
"""
