"""Build a model by name for a dataset's image shape and number of classes."""

from __future__ import annotations

from flax import nnx

from jaxpoison.errors import InputError
from jaxpoison.models.cnn import CNN
from jaxpoison.models.freq_cnn import FreqCNN
from jaxpoison.models.mlp import MLP
from jaxpoison.models.resnet import ResNet18
from jaxpoison.models.vgg import VGG16

MODEL_NAMES = ("mlp", "logreg", "cnn", "resnet18", "vgg16", "freq_cnn")


def create_model(name: str, image_shape: tuple[int, int, int], num_classes: int, seed: int = 0, **kwargs) -> nnx.Module:
    """Instantiate model ``name`` for inputs of shape ``image_shape`` ``(H, W, C)``.

    Args:
      name: ``"mlp"``, ``"logreg"`` (an MLP without hidden layers), ``"cnn"``,
        ``"resnet18"``, ``"vgg16"`` or ``"freq_cnn"`` (the FreqDef detector network,
        meant for DCT inputs).
      image_shape: ``(H, W, C)`` of one input image.
      num_classes: number of output logits.
      seed: initialisation seed.
      **kwargs: passed to the model's constructor (e.g. ``hidden=(64,)`` or ``width=16``).

    Raises:
      ValueError: unknown name or an image shape the model cannot take.
    """
    if len(image_shape) != 3:
        raise InputError(f"image_shape must be (H, W, C); got {image_shape!r}.")
    h, w, c = image_shape
    rngs = nnx.Rngs(seed)
    if name == "mlp":
        return MLP(h * w * c, num_classes, rngs=rngs, **kwargs)
    if name == "logreg":
        return MLP(h * w * c, num_classes, hidden=(), rngs=rngs, **kwargs)
    if name == "cnn":
        return CNN(image_shape, num_classes, rngs=rngs, **kwargs)
    if name == "resnet18":
        return ResNet18(num_classes, in_channels=c, rngs=rngs, **kwargs)
    if name == "vgg16":
        return VGG16(num_classes, in_channels=c, rngs=rngs, **kwargs)
    if name == "freq_cnn":
        return FreqCNN(image_shape, num_classes, rngs=rngs, **kwargs)
    raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
