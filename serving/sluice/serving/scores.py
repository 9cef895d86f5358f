"""How a response becomes per-row prediction scores and labels (for metrics and shadow comparison).

Rule (documented in docs/concepts/data-plane.md, relied on by the rollout's PSI check):
- probabilities: the first floating output of shape [N, C] with C >= 2. Binary (C == 2): score = P(class 1);
  multi-class: score = probability of the predicted (arg-max) class. Label = arg-max, unless an integer/bool output
  exists, whose per-row first value is the label.
- otherwise (a regressor): score = the first floating output's first value of each row; no label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sluice.serving.tensors import Tensor


@dataclass(frozen=True, slots=True)
class Scored:
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64] | None


def _rows(t: Tensor) -> npt.NDArray[np.generic]:
    data = t.data
    if data.ndim == 0:
        return data.reshape(1, 1)
    return data.reshape(data.shape[0], -1)


def score_outputs(outputs: tuple[Tensor, ...]) -> Scored | None:
    """Scores (and labels where the model is a classifier) per row; None when no output is numeric."""
    floats = [t for t in outputs if t.data.dtype.kind == "f" and t.data.size > 0]
    ints = [t for t in outputs if t.data.dtype.kind in "biu" and t.data.size > 0]
    probs = next((t for t in floats if t.data.ndim == 2 and t.data.shape[1] >= 2), None)
    label_rows = _rows(ints[0])[:, 0].astype(np.int64) if ints else None
    if probs is not None:
        p = probs.data.astype(np.float64)
        argmax = p.argmax(axis=1)
        scores = p[:, 1] if p.shape[1] == 2 else p[np.arange(p.shape[0]), argmax]
        labels = label_rows if label_rows is not None and len(label_rows) == len(scores) else argmax.astype(np.int64)
        return Scored(scores=scores, labels=labels)
    if floats:
        return Scored(scores=_rows(floats[0])[:, 0].astype(np.float64), labels=None)
    if label_rows is not None:
        return Scored(scores=label_rows.astype(np.float64), labels=label_rows)
    return None


# A regressor's shadow disagrees when any row's score moves by more than one score-histogram bucket.
REGRESSION_TOLERANCE = 0.05


def compare(primary: Scored | None, shadow: Scored | None) -> tuple[bool, npt.NDArray[np.float64]]:
    """(agree, |score differences| per row). Labels decide for classifiers, the tolerance for regressors."""
    if primary is None or shadow is None or len(primary.scores) != len(shadow.scores):
        return False, np.zeros(0)
    diff = np.abs(primary.scores - shadow.scores)
    if primary.labels is not None and shadow.labels is not None:
        return bool(np.array_equal(primary.labels, shadow.labels)), diff
    return bool(np.all(diff <= REGRESSION_TOLERANCE)), diff
