r"""Recomputes the GSC paper's Appendix Table 8 and sets the exact derivative beside it.

Run ``python -m experiments.table8``. Binary scores :math:`K = (p, 1-p)`, :math:`\mu = 0`,
:math:`\sigma = E(p)` in nats (``normalize_entropy=False``), ``top_c = 2``.

Columns: :math:`H(p)`; :math:`|H'(p)| = |\log((1-p)/p)|`; :math:`f(p)`; the paper's
:math:`f'(p) = f (1-p)/\sigma^2` (Eq. 12, which Table 8 prints); the exact derivative of Eq. 13 with
:math:`\sigma` held fixed, :math:`f (1-2p)/\sigma^2`, by `jax.grad` of `gsc_term` with
``stop_gradient_sigma=True``; and the full derivative with :math:`\sigma = E(p)` varying too, by
`jax.grad` of `gsc_term` (both implementations give it; the tests check them against float64
finite differences).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax._gsc import gsc_term

PAPER_P = tuple(np.round(np.arange(0.50, 0.901, 0.05), 2))
PAPER_COLUMNS = {  # Table 8 as printed: H, H', f, f'
    "H": (0.693, 0.688, 0.673, 0.647, 0.611, 0.562, 0.500, 0.423, 0.325),
    "H'": (0.000, 0.201, 0.405, 0.619, 0.847, 1.099, 1.386, 1.735, 2.197),
    "f": (0.197, 0.197, 0.198, 0.198, 0.196, 0.187, 0.163, 0.111, 0.031),
    "f'": (0.205, 0.187, 0.175, 0.165, 0.158, 0.148, 0.131, 0.093, 0.029),
}


def binary_gsc(p: jax.Array, *, stop_gradient_sigma: bool = False) -> jax.Array:
    """GSC value of the binary score vector (p, 1-p) in Table 8's convention."""
    logits = jnp.stack([jnp.log(p), jnp.log1p(-p)])
    return gsc_term(
        logits, top_c=2, normalize_entropy=False, stop_gradient_sigma=stop_gradient_sigma
    )


def table8_rows() -> list[dict[str, float]]:
    """One dict per p of Table 8 with our recomputed columns."""
    rows = []
    for p in PAPER_P:
        p = jnp.float32(p)
        entropy = -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))
        f = binary_gsc(p)
        rows.append(
            {
                "p": float(p),
                "H": float(entropy),
                "H'": float(jnp.abs(jnp.log((1 - p) / p))),
                "f": float(f),
                "f' paper Eq. 12": float(f * (1 - p) / entropy**2),
                "f' exact, sigma fixed": float(jax.grad(binary_gsc)(p, stop_gradient_sigma=True)),
                "f' exact, sigma=E(p)": float(jax.grad(binary_gsc)(p)),
            }
        )
    return rows


def table8_markdown() -> str:
    """Table 8 as a markdown table: our columns with the paper's printed values in brackets."""
    rows = table8_rows()
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for i, row in enumerate(rows):
        cells = [f"({row['p']:.2f}, {1 - row['p']:.2f})"]
        for name in names[1:]:
            printed = PAPER_COLUMNS.get(name if name != "f' paper Eq. 12" else "f'")
            paper = f" [{printed[i]:.3f}]" if printed else ""
            cells.append(f"{row[name]:.3f}{paper}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("GSC paper Table 8 recomputed with gsc_jax (paper's printed values in brackets).\n")
    print(table8_markdown())
