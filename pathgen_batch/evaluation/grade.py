"""Grade (ordinal class) metrics: accuracy, balanced accuracy, macro AUC, macro F1, QWK.

Classes are data, not a hard-coded count: ``classes`` lists them in their ordinal order (the
order the probability columns follow and the order quadratic-weighted kappa measures distance
in). A metric that is undefined on the given fold (a class absent from ``y_true``, a fold with
one class only) is NaN or skips that class, and the reason is recorded in ``notes``; it never
crashes the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation._checks import int_array, probability_matrix, same_length


def _pair(y_true: Any, y_pred: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = int_array("y_true", y_true, n_classes)
    p = int_array("y_pred", y_pred, n_classes)
    if same_length(y_true=t, y_pred=p) == 0:
        raise DataError("y_true: expected at least one item, got none")
    return t, p


def accuracy(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Fraction of items whose predicted class index equals the true one. (N,), (N,)."""
    t, p = _pair(y_true, y_pred, n_classes)
    return float(np.mean(t == p))


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (absent classes have no recall)."""
    t, p = _pair(y_true, y_pred, n_classes)
    recalls = [np.mean(p[t == k] == k) for k in np.unique(t)]
    return float(np.mean(recalls))


def macro_f1(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in ``y_true`` or ``y_pred``.

    A class that is never predicted (or never true) has F1 = 0 rather than a warning.
    """
    t, p = _pair(y_true, y_pred, n_classes)
    labels = np.union1d(t, p)
    return float(f1_score(t, p, labels=labels, average="macro", zero_division=0.0))


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, n_classes: int) -> tuple[float, str | None]:
    """Cohen's kappa with quadratic weights (sklearn), classes in ordinal index order.

    Returns (kappa, note). Kappa is undefined (NaN, with a note) when truth and prediction are
    one and the same single class.
    """
    t, p = _pair(y_true, y_pred, n_classes)
    if np.union1d(t, p).size == 1:
        return float("nan"), "QWK undefined: y_true and y_pred are all one and the same class"
    kappa = cohen_kappa_score(t, p, labels=np.arange(n_classes), weights="quadratic")
    return float(kappa), None


def macro_ovr_auc(y_true: Any, probs: Any) -> tuple[float, dict[int, float], list[str]]:
    """Macro one-vs-rest ROC AUC over the classes present in ``y_true``.

    y_true: (N,) class indices; probs: (N, K). A class absent from ``y_true`` (no positives) or
    present in every item (no negatives) is skipped with a note. Returns (macro AUC, per-class
    AUC with NaN for skipped classes, notes); the macro AUC is NaN when every class is skipped.
    """
    p = probability_matrix("probs", probs)
    t = int_array("y_true", y_true, p.shape[1])
    same_length(y_true=t, probs=p)
    per_class: dict[int, float] = {}
    notes: list[str] = []
    for k in range(p.shape[1]):
        positives = int(np.sum(t == k))
        if positives == 0:
            per_class[k] = float("nan")
            notes.append(f"AUC: class {k} skipped, absent from y_true")
        elif positives == t.size:
            per_class[k] = float("nan")
            notes.append(f"AUC: class {k} skipped, every item is of this class")
        else:
            per_class[k] = float(roc_auc_score(t == k, p[:, k]))
    scored = [v for v in per_class.values() if not np.isnan(v)]
    macro = float(np.mean(scored)) if scored else float("nan")
    return macro, per_class, notes


def _class_indices(y_true: Any, classes: Sequence[Any]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    if len(lookup) != len(classes):
        raise DataError(f"classes: expected distinct class labels, got {list(classes)}")
    values = np.asarray(y_true, dtype=object)
    if values.ndim != 1:
        raise DataError(f"y_true: expected a 1-d array, got shape {values.shape}")
    unknown = sorted({str(v) for v in values.tolist() if v not in lookup})
    if unknown:
        raise DataError(
            f"y_true: expected labels from classes {list(classes)}, got unknown {unknown[:5]}"
        )
    return np.asarray([lookup[v] for v in values.tolist()], dtype=np.int64)


def grade_metrics(y_true: Any, probs: Any, classes: Sequence[Any]) -> dict[str, Any]:
    """All grade metrics for one fold.

    y_true: (N,) labels, each one of ``classes``; probs: (N, K) class probabilities with columns
    in ``classes`` order (K = len(classes)); the predicted class is the arg-max.

    Returns a dict: ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_auc``, ``macro_f1``,
    ``qwk`` (floats, NaN where undefined), ``auc_per_class`` ({class label: AUC or NaN}),
    ``predicted`` (the (N,) predicted labels as a list) and ``notes`` (list of str).
    """
    classes = list(classes)
    if len(classes) < 2:
        raise DataError(f"classes: expected at least 2 classes, got {classes}")
    p = probability_matrix("probs", probs)
    if p.shape[1] != len(classes):
        raise DataError(
            f"probs: expected {len(classes)} columns (one per class {classes}), got {p.shape[1]}"
        )
    t = _class_indices(y_true, classes)
    n = same_length(y_true=t, probs=p)
    if n == 0:
        raise DataError("y_true: expected at least one item, got none")
    pred = np.argmax(p, axis=1)  # (N,)
    k = len(classes)
    macro_auc, per_class, notes = macro_ovr_auc(t, p)
    qwk, qwk_note = quadratic_weighted_kappa(t, pred, k)
    if qwk_note:
        notes.append(qwk_note)
    return {
        "n": n,
        "accuracy": accuracy(t, pred, k),
        "balanced_accuracy": balanced_accuracy(t, pred, k),
        "macro_auc": macro_auc,
        "macro_f1": macro_f1(t, pred, k),
        "qwk": qwk,
        "auc_per_class": {classes[i]: v for i, v in per_class.items()},
        "predicted": [classes[i] for i in pred.tolist()],
        "notes": notes,
    }
