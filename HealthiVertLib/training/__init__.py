"""Fitting the learned parts: the generator and its HGAM classifier (PyTorch), and the SVM grader.

``generator_data``: training records and slice sampling from phantoms and graded cases;
``losses``: the generator and discriminator losses; ``generator``: the training loop (validation,
checkpoints, resume, AMP, DDP); ``hgam``: the HGAM fracture classifier's data and training;
``grader``: fitting the SVM grader on feature tables. Beside the grading path, which only loads
what these produce (``engines.generator.weights``, ``measure.grading``).
"""
