"""Learning from labelled cells: a linear classifier on the embeddings.

Besides MarScope's prototype (the mean of the examples, mixed with the text: a hybrid query),
a query can be answered by a classifier fitted on the labelled embeddings: logistic regression
of the positive examples against the counter-examples and a sample of background cells (any
cell of the set is far more likely to be something else). Positives and negatives weigh half
each; the background sample carries :data:`BACKGROUND_SHARE` of the negatives' half when there
are counter-examples. The penalty pulls the weights towards the text query (its unit vector
times the model's temperature) when there is one, so a few labels adjust the text's answer
rather than replace it; without text, towards zero.

The classifier is linear: its score of a cell is ``w . x + b``, so a planet is scored with the
same matrix-vector product as a text query (:func:`~marscope_stac.query.scoring.score` with
the unit ``w``), and its probability is ``sigmoid(|w| s + b)``: the probability that the cell
is like the positives rather than the background, at even odds.

The settings (:data:`L2`, :data:`BACKGROUND_SHARE`, the text prior) were chosen on a
validation world (the demo world of seed 1, held-out split; ``bench/labels.py``), apart from
the demo world's training scenes and from its held-out area, which reports the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError

__all__ = [
    "BACKGROUND_SAMPLE",
    "BACKGROUND_SHARE",
    "LEARNERS",
    "LinearClassifier",
    "background_rows",
    "fit_classifier",
]

LEARNERS = ("prototype", "classifier")
"""How a query with examples is answered: MarScope's prototype, or a fitted classifier."""

BACKGROUND_SAMPLE = 2000
"""Background cells drawn (at most) as negatives of the classifier."""

BACKGROUND_SHARE = 0.2
"""Share of the negatives' weight carried by the background sample (with counter-examples)."""

L2 = 1e-4
"""Weight of the L2 penalty on ``w - prior`` (embeddings are unit vectors)."""


@dataclass(frozen=True)
class LinearClassifier:
    """A fitted linear classifier of embeddings.

    Attributes:
        w: Weights, one per embedding dimension.
        b: Bias.
        n_positive: Positive examples it was fitted on (the text included).
        n_negative: Counter-examples.
        n_background: Background cells.
    """

    w: NDArray[np.float32]
    b: float
    n_positive: int
    n_negative: int
    n_background: int

    @property
    def norm(self) -> float:
        """``|w|``: the scale of a unit-vector score."""
        return float(np.linalg.norm(self.w))

    def unit(self) -> NDArray[np.float32]:
        """``w / |w|``, the direction to score a set with."""
        return (self.w / max(self.norm, 1e-12)).astype(np.float32)

    def probability(self, unit_scores: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """Probabilities from scores against :meth:`unit`."""
        z = np.float32(self.norm) * np.asarray(unit_scores, np.float32) + np.float32(self.b)
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def describe(self) -> dict[str, object]:
        """As recorded in products."""
        return {
            "learner": "classifier",
            "model": "logistic regression (L2)",
            "positives": self.n_positive,
            "negatives": self.n_negative,
            "background": self.n_background,
        }


def background_rows(n_rows: int, exclude: NDArray[np.int64], seed: int = 0) -> NDArray[np.int64]:
    """Up to :data:`BACKGROUND_SAMPLE` rows drawn at random (a fixed seed), not in ``exclude``."""
    rng = np.random.default_rng(seed)
    take = min(BACKGROUND_SAMPLE, n_rows)
    rows = np.unique(rng.choice(n_rows, size=take, replace=False)) if take else np.zeros(0, int)
    return rows[~np.isin(rows, exclude)].astype(np.int64)


def fit_classifier(
    positives: NDArray[np.floating[Any]],
    negatives: NDArray[np.floating[Any]] | None,
    background: NDArray[np.floating[Any]],
    *,
    prior: NDArray[np.floating[Any]] | None = None,
    l2: float = L2,
    background_share: float = BACKGROUND_SHARE,
) -> LinearClassifier:
    """Fit the classifier (see the module docstring).

    Args:
        positives: ``(n, d)`` embeddings of the examples.
        negatives: ``(m, d)`` embeddings of the counter-examples, or None.
        background: ``(k, d)`` embeddings of background cells.
        prior: Weights the penalty pulls ``w`` towards (the text query scaled by the
            model's temperature), None: towards zero.
        l2: Weight of the penalty.
        background_share: Share of the negatives' weight the background cells carry (the
            rest is the counter-examples'; all of it without counter-examples).

    Raises:
        ConfigError: without positives, or without anything to tell them from.
    """
    from scipy.optimize import minimize

    pos = np.asarray(positives, np.float64)
    neg = np.zeros((0, pos.shape[1])) if negatives is None else np.asarray(negatives, np.float64)
    bg = np.asarray(background, np.float64)
    if not len(pos):
        raise ConfigError("the classifier needs positive examples (points or cells)")
    if not len(neg) + len(bg):
        raise ConfigError("the classifier needs counter-examples or background cells")
    x = np.concatenate([pos, neg, bg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg) + len(bg))])
    share = background_share if len(neg) else 1.0
    weight = np.concatenate(
        [
            np.full(len(pos), 0.5 / len(pos)),
            np.full(len(neg), 0.5 * (1.0 - share) / max(len(neg), 1)),
            np.full(len(bg), 0.5 * share / max(len(bg), 1)),
        ]
    )
    w0 = np.zeros(x.shape[1]) if prior is None else np.asarray(prior, np.float64)

    def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        return _loss(theta, x, y, weight, w0, l2)

    start = np.concatenate([w0, [-float(np.median(bg @ w0)) if len(bg) else 0.0]])
    fit = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return LinearClassifier(
        fit.x[:-1].astype(np.float32), float(fit.x[-1]), len(pos), len(neg), len(bg)
    )


def _loss(
    theta: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    weight: NDArray[np.float64],
    w0: NDArray[np.float64],
    l2: float,
) -> tuple[float, NDArray[np.float64]]:
    """Weighted logistic loss plus ``l2 / 2 |w - w0|^2``, and its gradient."""
    w, b = theta[:-1], theta[-1]
    z = x @ w + b
    signed = np.where(y > 0, -z, z)  # log(1 + exp(-z)) for y = 1, log(1 + exp(z)) for y = 0
    dw = w - w0
    value = float(np.sum(weight * np.logaddexp(0.0, signed)) + 0.5 * l2 * dw @ dw)
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
    g = weight * (p - y)
    return value, np.concatenate([x.T @ g + l2 * dw, [g.sum()]])
