"""ImageNet's decoders for the streamed pipeline (`stream.StreamSource`): TensorFlow graph
functions of one encoded image.

Train: Inception-style random-resized crop (Szegedy et al. 2015: area in [0.08, 1], aspect ratio
in [3/4, 4/3], 10 attempts, else a centre crop) resized bilinearly to S, a random horizontal flip,
and optionally AlexNet-style PCA lighting (Krizhevsky et al. 2012; std 0.1 in the pycls recipe,
facebookresearch/pycls pycls/datasets/transforms.py); or the fine-grained recipe's resize to
R x R and random S x S crop (`stream.square_crop_decoders`). Evaluation: the centre crop of
224/256 of the shorter side resized to S ('short_side', = resize 256, centre crop 224 at 224), or
the centre S x S of the R x R resize ('square'). `seed` is an int64 [2] stateless seed: the same
seed gives the same crop, flip and lighting.
"""

from experiments.common.data import stream

# AlexNet PCA lighting on ImageNet (Krizhevsky et al. 2012), values as in pycls and fb.resnet.torch.
PCA_EIGVALS = (0.2175, 0.0188, 0.0045)
PCA_EIGVECS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
TRAIN_CROPS = ("inception", "resize_random")
EVAL_CROPS = ("short_side", "square")


def inception_crop(encoded, seed, image_size: int):
    """The random-resized crop and flip of one encoded image -> uint8 [S, S, 3]."""
    tf = stream.tf()
    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = stream.image_shape(encoded)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # All attempts failed (the sampler then returns the whole image): a centre crop instead.
    whole = tf.reduce_all(tf.equal(size[:2], shape))
    window = tf.where(whole, stream.centre_window(shape, stream.EVAL_CROP_FRACTION), window)
    image = stream.resize_uint8(stream.decode_crop(encoded, window), image_size)
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def pca_lighting(image, seed, std: float):
    """AlexNet's PCA lighting: image + 255 * eigvecs @ (alpha * eigvals), alpha ~ N(0, std^2)."""
    tf = stream.tf()
    seeds = tf.random.experimental.stateless_split(seed, 4)
    alpha = tf.random.stateless_normal([3], seeds[2], stddev=std)
    rgb = tf.linalg.matvec(tf.constant(PCA_EIGVECS), alpha * tf.constant(PCA_EIGVALS))
    return tf.cast(
        tf.clip_by_value(tf.round(tf.cast(image, tf.float32) + 255.0 * rgb), 0.0, 255.0), tf.uint8
    )


def short_side_centre(encoded, image_size: int):
    """The centre crop of 224/256 of the shorter side, resized to S."""
    window = stream.centre_window(stream.image_shape(encoded), stream.EVAL_CROP_FRACTION)
    return stream.resize_uint8(stream.decode_crop(encoded, window), image_size)


def decoders(train_crop: str, eval_crop: str, image_size: int, lighting_std: float) -> tuple:
    """(decode_train, decode_eval) of a recipe's crops (TRAIN_CROPS, EVAL_CROPS)."""
    square_train, square_eval = stream.square_crop_decoders(image_size)
    crop = (
        (lambda e, s: inception_crop(e, s, image_size))
        if train_crop == "inception"
        else square_train
    )

    def decode_train(encoded, seed):
        image = crop(encoded, seed)
        return pca_lighting(image, seed, lighting_std) if lighting_std > 0 else image

    decode_eval = (
        (lambda e: short_side_centre(e, image_size)) if eval_crop == "short_side" else square_eval
    )
    return decode_train, decode_eval
