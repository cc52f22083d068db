"""Measured links of a cohort: what the slide, the expression and both tell about grade, and how
much of the expression the slide carries.

Each link is scored out of fold on the cohort's own folds, with fixed models chosen before
looking at any result (nothing here is tuned): features are the mean-pooled tile features of
each patient, z-scored on the training folds; grade is predicted by multinomial logistic
regression (L2, C = 1) from the slide, from the expression, and from both (balanced accuracy
and macro one-vs-rest AUC, patients of known grade); expression is predicted from the slide by
ridge regression (alpha = 10), scored by the mean per-gene Pearson correlation across patients
of the pooled out-of-fold predictions. On cohort v1 the slide depends on grade only through
expression; on v2 it also carries grade morphology, so "slide + expression" can beat
"expression" for grade.
"""

from __future__ import annotations

import warnings

import numpy as np

from pathgen_batch.evaluation import mean_per_gene_pearson
from pathgen_batch.training.data import TrainingData

LOGISTIC_C = 1.0
RIDGE_ALPHA = 10.0


def _z(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    mu, sd = train.mean(0), train.std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _grade_scores(x: np.ndarray, grade: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    known = grade >= 0
    classes = np.unique(grade[known])
    probs = np.full((len(grade), classes.size), np.nan)
    for f in np.unique(folds):
        tr, te = known & (folds != f), known & (folds == f)
        if not te.any():
            continue
        model = LogisticRegression(C=LOGISTIC_C, max_iter=2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(_z(x[tr], x[tr]), grade[tr])
        p = model.predict_proba(_z(x[tr], x[te]))
        probs[np.ix_(te, np.searchsorted(classes, model.classes_))] = p
    y, p = grade[known], probs[known]
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y, classes[np.argmax(p, 1)])),
        "macro_auc": float(roc_auc_score(y, p, multi_class="ovr", average="macro")),
    }


def cohort_links(data: TrainingData) -> dict[str, dict[str, float]]:
    """Out-of-fold links (see the module doc): ``grade_from_slide``, ``grade_from_expression``,
    ``grade_from_both`` (balanced accuracy, macro AUC) and ``expression_from_slide``
    (mean per-gene Pearson), on the patients with expression."""
    from sklearn.linear_model import Ridge

    if not data.expression_known.all():
        data = data.subset(np.flatnonzero(data.expression_known))

    slide = np.stack([b.mean(0) for b in data.bags]).astype(np.float64)  # (N, D)
    expr = np.asarray(data.expression, dtype=np.float64)  # (N, G)
    folds = np.asarray(data.folds)
    grade = np.asarray(data.grade)
    pred = np.zeros_like(expr)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        model = Ridge(alpha=RIDGE_ALPHA).fit(_z(slide[tr], slide[tr]), expr[tr])
        pred[te] = model.predict(_z(slide[tr], slide[te]))
    return {
        "grade_from_slide": _grade_scores(slide, grade, folds),
        "grade_from_expression": _grade_scores(expr, grade, folds),
        "grade_from_both": _grade_scores(np.hstack([slide, expr]), grade, folds),
        "expression_from_slide": {"mean_pearson": mean_per_gene_pearson(expr, pred)},
    }


def links_lines(links: dict[str, dict[str, float]]) -> list[str]:
    """The links as inventory lines."""
    lines = ["  measured links (out of fold on the cohort's folds, untuned models):"]
    for key in ("grade_from_slide", "grade_from_expression", "grade_from_both"):
        s = links[key]
        lines.append(
            f"    {key.replace('_', ' ')}: balanced accuracy {s['balanced_accuracy']:.3f}, "
            f"macro AUC {s['macro_auc']:.3f}"
        )
    r = links["expression_from_slide"]["mean_pearson"]
    lines.append(f"    expression from slide (ridge): mean per-gene Pearson {r:.3f}")
    return lines
