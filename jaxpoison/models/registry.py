"""Build a model by name for a dataset's input shape and number of classes."""

from __future__ import annotations

from flax import nnx

from jaxpoison.errors import InputError
from jaxpoison.models.cnn import CNN
from jaxpoison.models.freq_cnn import FreqCNN
from jaxpoison.models.mlp import MLP
from jaxpoison.models.pointnet import PointNet
from jaxpoison.models.resnet import ResNet18
from jaxpoison.models.vgg import VGG16

MODEL_NAMES = ("mlp", "logreg", "cnn", "resnet18", "vgg16", "freq_cnn", "pointnet", "pointnet_small")
# A narrower PointNet for CPU runs (about 1/8 of the multiply-adds): per-point 64, 128, 256; head 128.
POINTNET_SMALL = {"point_widths": (64, 128, 256), "head_widths": (128,)}


def create_model(name: str, image_shape: tuple[int, int, int], num_classes: int, seed: int = 0, **kwargs) -> nnx.Module:
    """Instantiate model ``name`` for inputs of shape ``image_shape`` ``(H, W, C)`` (``(P, C)`` for PointNet).

    Args:
      name: ``"mlp"``, ``"logreg"`` (an MLP without hidden layers), ``"cnn"``,
        ``"resnet18"``, ``"vgg16"``, ``"freq_cnn"`` (the FreqDef detector network,
        meant for DCT inputs), ``"pointnet"`` (point clouds ``[P, 3]``; the original widths) or
        ``"pointnet_small"`` (the same with per-point widths 64, 128, 256 and a 128-wide head).
      image_shape: ``(H, W, C)`` of one input image, or ``(P, C)`` of one point cloud for ``"pointnet"``.
      num_classes: number of output logits.
      seed: initialisation seed.
      **kwargs: passed to the model's constructor (e.g. ``hidden=(64,)`` or ``width=16``).

    Raises:
      ValueError: unknown name or an image shape the model cannot take.
    """
    if name in ("pointnet", "pointnet_small"):
        if len(image_shape) != 2:
            raise InputError(f"pointnet takes point clouds: the input shape must be (points, values per point), e.g. "
                             f"(1024, 3); got {image_shape!r}.")  # fmt: skip
        widths = POINTNET_SMALL if name == "pointnet_small" else {}
        return PointNet(num_classes, in_features=image_shape[-1], rngs=nnx.Rngs(seed), **{**widths, **kwargs})
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
