"""Models, and the boundary that turns Flax NNX, Linen, Equinox and plain-function models into one pytree."""

from jaxpoison.models.cnn import CNN
from jaxpoison.models.freq_cnn import FreqCNN
from jaxpoison.models.functional import (
    FunctionalModel,
    NNXStructure,
    Normalization,
    Structure,
    count_params,
    output_layer,
    replace_layer,
    to_functional,
)
from jaxpoison.models.linen import LinenStructure, from_linen
from jaxpoison.models.mlp import MLP
from jaxpoison.models.plain import ApplyStructure, from_apply
from jaxpoison.models.pointnet import PointNet
from jaxpoison.models.registry import MODEL_NAMES, create_model
from jaxpoison.models.resnet import BasicBlock, ResNet18
from jaxpoison.models.vgg import VGG16

__all__ = [
    "CNN",
    "MLP",
    "MODEL_NAMES",
    "VGG16",
    "ApplyStructure",
    "BasicBlock",
    "EquinoxStructure",
    "FreqCNN",
    "FunctionalModel",
    "LinenStructure",
    "NNXStructure",
    "Normalization",
    "PointNet",
    "ResNet18",
    "Structure",
    "count_params",
    "create_model",
    "from_apply",
    "from_equinox",
    "from_linen",
    "output_layer",
    "replace_layer",
    "to_functional",
]


def __getattr__(name: str):
    # Equinox is an optional extra: import it only when its adapter is asked for.
    if name in ("EquinoxStructure", "from_equinox"):
        from jaxpoison.models import equinox

        return getattr(equinox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
