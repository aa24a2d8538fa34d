"""The learned HealthiVert-GAN engine: networks, HGAM attention, weight files and inference (PyTorch).

Importing this package imports torch; nothing on the grading path imports it at module import
time, so HealthiVert works without torch for every engine but ``generator``. ``networks``: the
two-stage generator (coarse + refine, EEM, contextual attention) and discriminators;
``classifier``: the HGAM fracture classifier; ``hgam``: its Grad-CAM++ attention; ``weights``:
safetensors files with JSON model cards (never unpickled); ``devices``: the device the networks run on (``auto``: a GPU only when a test kernel runs on it); ``slices``: 2.5D slices, masking and
SHRM composition; ``engine``: the ``generator`` engine. Training lives apart, in ``HealthiVertLib.training``. Research use only, not
for diagnosis; weights trained on simulated data say so in their model card.
"""
