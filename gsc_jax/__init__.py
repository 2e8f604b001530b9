"""gsc_jax: the GSC loss (Zhao et al. 2022) for JAX, with the baselines it combines with.

from gsc_jax import gsc_loss
loss = gsc_loss(logits, labels, gamma=0.05, top_c=2).mean()
"""

from gsc_jax import cpu_kernel
from gsc_jax import metrics
from gsc_jax import plots
from gsc_jax._calibration_losses import adaptive_focal_loss
from gsc_jax._calibration_losses import dca_loss
from gsc_jax._calibration_losses import margin_label_smoothing_loss
from gsc_jax._calibration_losses import mdca_loss
from gsc_jax._calibration_losses import mmce_loss
from gsc_jax._gsc import gsc_loss
from gsc_jax._gsc import gsc_term
from gsc_jax._gsc import with_gsc
from gsc_jax._linear import linear_gsc_loss
from gsc_jax._losses import cross_entropy
from gsc_jax._losses import entropy_regularized_cross_entropy
from gsc_jax._losses import focal_loss
from gsc_jax._losses import label_smoothing_cross_entropy
from gsc_jax._losses import softmax_entropy
from gsc_jax._margins import arcface_logits
from gsc_jax._margins import cosface_logits
from gsc_jax._ols import OnlineLabelSmoothingState
from gsc_jax._ols import ols_batch_statistics
from gsc_jax._ols import ols_finalize_epoch
from gsc_jax._ols import ols_init
from gsc_jax._ols import ols_update
from gsc_jax._ols import online_label_smoothing_loss
from gsc_jax._temperature import fit_matrix_scaling
from gsc_jax._temperature import fit_temperature
from gsc_jax._temperature import fit_vector_scaling

__version__ = "0.1.0"

__all__ = [
    "OnlineLabelSmoothingState",
    "adaptive_focal_loss",
    "arcface_logits",
    "cosface_logits",
    "cpu_kernel",
    "cross_entropy",
    "dca_loss",
    "entropy_regularized_cross_entropy",
    "fit_matrix_scaling",
    "fit_temperature",
    "fit_vector_scaling",
    "focal_loss",
    "gsc_loss",
    "gsc_term",
    "label_smoothing_cross_entropy",
    "linear_gsc_loss",
    "margin_label_smoothing_loss",
    "mdca_loss",
    "metrics",
    "mmce_loss",
    "ols_batch_statistics",
    "ols_finalize_epoch",
    "ols_init",
    "ols_update",
    "online_label_smoothing_loss",
    "plots",
    "softmax_entropy",
    "with_gsc",
]
