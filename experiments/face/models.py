"""IR-ResNet face embeddings (Deng et al. 2019) and the cosine classifier of ArcFace / CosFace.

Backbone as in insightface's arcface_torch (deepinsight/insightface, recognition/arcface_torch/
backbones/iresnet.py), in Flax Linen:

- stem: 3x3/1 convolution (no bias), BN, PReLU;
- four stages of improved residual blocks (`IBasicBlock`: BN, 3x3 conv, BN, PReLU, 3x3 conv with
  the stage's stride, BN, plus the shortcut; no activation after the sum), every stage with
  stride 2, widths w, 2w, 4w, 8w (w = 64), a 1x1/2 convolution + BN shortcut where the shape
  changes;
- embedding head: BN, flatten, dropout, dense to `embedding_size` (512), BN without a learned scale
  (insightface fixes it at 1: `features.weight.requires_grad = False`).

Depths: iresnet18 (2, 2, 2, 2), iresnet34 (3, 4, 6, 3), iresnet50 (3, 4, 14, 3), iresnet100
(3, 13, 30, 3). A 112x112 face gives a 7x7 map before the head (the dense layer is 25088 x 512 at
w = 64). Initialisation as in iresnet.py: convolutions N(0, 0.1^2), BN scale 1 / bias 0, PReLU
slopes 0.25, the dense layer PyTorch's default U(+-1/sqrt(fan_in)). BatchNorm momentum 0.9
(PyTorch's 0.1), epsilon 1e-5.

The classifier (`CosineHead`) holds one weight vector per identity, W [D, K] initialised N(0, 0.01^2)
as in arcface_torch's partial_fc; its logits are s * cos(theta_j) = s * <e/|e|, w_j/|w_j|>. The
margin of ArcFace or CosFace is added to the target in the loss
(`experiments.common.losses.LossSpec.margin`), not here, so evaluation sees plain scaled cosines.
With `class_sharding` (a NamedSharding over the class axis, model parallel as partial FC: An et al.
2021), W and the logits are split across the devices along the classes and the (small) embeddings
are gathered to every device, so no device holds the whole W.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.common import layers

CONFIGS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
MODELS = tuple(CONFIGS)
conv_init = nn.initializers.normal(0.1)
class_weight_init = nn.initializers.normal(0.01)
NORM_EPSILON = 1e-12  # as torch.nn.functional.normalize


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(|x|, 1e-12) along `axis` (torch.nn.functional.normalize), computed in float32.

    Written as x * rsqrt(max(|x|^2, 1e-24)) so that a zero vector has a zero gradient, not NaN.
    """
    x = x.astype(jnp.float32)
    squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, NORM_EPSILON**2))


class PReLU(nn.Module):
    """Per-channel PReLU, slopes initialised to 0.25 (PyTorch's nn.PReLU(C))."""

    @nn.compact
    def __call__(self, x):
        slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class IBasicBlock(nn.Module):
    """BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN; plus the (projected) input."""

    features: int
    stride: int
    conv: type
    norm: type

    @nn.compact
    def __call__(self, x):
        y = self.norm()(x)
        y = self.conv(self.features, (3, 3))(y)
        y = PReLU()(self.norm()(y))
        y = self.norm()(self.conv(self.features, (3, 3), self.stride)(y))
        if x.shape != y.shape:
            x = self.norm()(self.conv(self.features, (1, 1), self.stride, padding="VALID")(x))
        return x + y


class IResNet(nn.Module):
    """`model(x [B, H, W, 3], train) -> float32 embeddings [B, embedding_size]` (not normalised).

    Attributes:
      depths: blocks per stage.
      width: stem / first-stage width w (64 in insightface; smaller for tests and CPU runs).
      embedding_size: D (512).
      dropout: dropout rate before the dense layer (0 in insightface's configs).
      dtype: compute dtype (parameters and BN statistics stay float32).
    """

    depths: Sequence[int] = (3, 4, 14, 3)
    width: int = 64
    embedding_size: int = 512
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=conv_init,
        )
        norm = layers.torch_batch_norm(train, self.dtype)
        x = x.astype(self.dtype)
        x = PReLU(name="stem_prelu")(
            norm(name="stem_bn")(conv(self.width, (3, 3), name="stem_conv")(x))
        )
        for stage, depth in enumerate(self.depths):
            for i in range(depth):
                x = IBasicBlock(self.width * 2**stage, 2 if i == 0 else 1, conv, norm)(x)
        x = norm(name="head_bn")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(
            self.embedding_size,
            dtype=self.dtype,
            name="fc",
            kernel_init=layers.torch_kernel_init,
            bias_init=layers.torch_bias_init(x.shape[-1]),
        )(x)
        x = norm(use_scale=False, name="features")(x)
        return x.astype(jnp.float32)


def padded_num_classes(num_classes: int, class_sharding=None) -> int:
    """K rounded up to a multiple of the devices `class_sharding` splits the classes over."""
    if class_sharding is None:
        return num_classes
    shards = class_sharding.mesh.devices.size
    return -(-num_classes // shards) * shards


class CosineHead(nn.Module):
    """`head(embeddings [B, D]) -> float32 logits s * cos(theta) [B, num_classes]`.

    With `class_sharding`, W is [D, K'] with K' = `padded_num_classes(K)` (a multiple of the
    devices, as an evenly sharded array must be); the K' - K padding columns start at zero and
    their logits are dropped, so they never reach the loss. The first K columns are initialised
    as without sharding, so the model is the same on any number of devices.

    Attributes:
      num_classes: K identities.
      scale: s (64 in insightface).
      class_sharding: NamedSharding of W and the logits along the class axis across the devices
        (model-parallel head), or None (W replicated).
    """

    num_classes: int
    scale: float = 64.0
    class_sharding: jax.sharding.NamedSharding | None = None

    @nn.compact
    def __call__(self, embeddings):
        dim, k = embeddings.shape[-1], self.num_classes
        padded = padded_num_classes(k, self.class_sharding)

        def init(key, shape, dtype):
            weight = class_weight_init(key, (dim, k), dtype)
            return jnp.pad(weight, ((0, 0), (0, shape[1] - k)))

        weight = l2_normalize(self.param("kernel", init, (dim, padded), jnp.float32), axis=0)
        embeddings = l2_normalize(embeddings)
        if self.class_sharding is None:
            return self.scale * (embeddings @ weight)
        replicated = jax.sharding.NamedSharding(
            self.class_sharding.mesh, jax.sharding.PartitionSpec()
        )
        embeddings = jax.lax.with_sharding_constraint(embeddings, replicated)
        weight = jax.lax.with_sharding_constraint(weight, self.class_sharding)
        cosines = jax.lax.with_sharding_constraint(embeddings @ weight, self.class_sharding)
        return self.scale * cosines[:, :k]


class FaceModel(nn.Module):
    """An IR-ResNet embedding and a cosine classifier over the training identities.

    `model(x, train) -> logits s * cos(theta) [B, K]` (what the shared training loop trains, the
    margin added by the loss); `model.apply(variables, x, method=FaceModel.embed)` gives the
    L2-normalised embeddings [B, D] that verification compares.
    """

    num_classes: int
    depths: Sequence[int] = (3, 4, 14, 3)
    width: int = 64
    embedding_size: int = 512
    dropout: float = 0.0
    scale: float = 64.0
    class_sharding: jax.sharding.NamedSharding | None = None
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.backbone = IResNet(
            self.depths, self.width, self.embedding_size, self.dropout, self.dtype
        )
        self.head = CosineHead(self.num_classes, self.scale, self.class_sharding)

    def __call__(self, x, train: bool):
        return self.head(self.backbone(x, train))

    def embed(self, x, train: bool = False):
        return l2_normalize(self.backbone(x, train))


def create_model(
    name: str,
    num_classes: int,
    *,
    width: int = 64,
    embedding_size: int = 512,
    dropout: float = 0.0,
    scale: float = 64.0,
    bf16: bool = False,
    class_sharding=None,
    depths: Sequence[int] | None = None,
) -> FaceModel:
    """FaceModel by backbone name (MODELS); `depths` overrides the name's (small test models)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown --model {name!r}; choose one of {', '.join(MODELS)}.")
    return FaceModel(
        num_classes,
        tuple(depths or CONFIGS[name]),
        width,
        embedding_size,
        dropout,
        scale,
        class_sharding,
        jnp.bfloat16 if bf16 else jnp.float32,
    )
