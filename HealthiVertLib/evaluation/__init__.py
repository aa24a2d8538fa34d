"""Accuracy benchmark: every engine and baseline against truth, side by side (``healthivert bench``).

``records``: the protocol's constants and records; ``simulated``: items from simulated fractures of
real and phantom vertebrae, run through every estimator; ``baselines``: reference-free estimators
(min/max within the vertebra, neighbours' heights); ``scoring``: errors, grader fitting with grouped
folds, metrics; ``tables``: the Markdown report, raw JSON and figures; ``bench``: :func:`run`;
``real``: every estimator against radiologists' Genant grades of real CTs (``bench --real``).
Beside the grading path.
"""
