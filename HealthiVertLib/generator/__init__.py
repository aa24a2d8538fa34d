"""The learned pseudo-healthy engine's networks, losses, HGAM attention and weight files (PyTorch).

Importing this package imports torch; the core never imports it at module import time, so
HealthiVert works without torch for every engine but ``generator``. Research use only, not for
diagnosis; weights trained on simulated data say so in their model card.
"""

from .hgam import (
    ClassifierConfig,
    FractureClassifier,
    attention_from_cam,
    grad_cam_pp,
    train_classifier,
    uniform_attention,
)
from .losses import LossTargets, LossWeights, discriminator_loss, generator_loss, sobel_edges
from .networks import (
    ContextualAttention,
    Discriminators,
    Generator,
    GeneratorConfig,
    GeneratorOutput,
    PatchDiscriminator,
    count_parameters,
    hu_to_model,
    local_view,
    local_window,
    model_to_hu,
)
from .weights import (
    ModelCard,
    load_classifier,
    load_generator,
    load_reference_checkpoint,
    read_model_card,
    save_weights,
)

__all__ = [
    "ClassifierConfig", "FractureClassifier", "attention_from_cam", "grad_cam_pp", "train_classifier",
    "uniform_attention",
    "LossTargets", "LossWeights", "discriminator_loss", "generator_loss", "sobel_edges",
    "ModelCard", "load_classifier", "load_generator", "load_reference_checkpoint", "read_model_card", "save_weights",
    "ContextualAttention", "Discriminators", "Generator", "GeneratorConfig", "GeneratorOutput",
    "PatchDiscriminator", "count_parameters", "hu_to_model", "local_view", "local_window", "model_to_hu",
]
