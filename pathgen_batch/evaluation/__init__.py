"""Evaluation: survival and grade metrics, transcriptome fidelity, paired tests across
(repeated) CV folds, multiplicity, bootstrap intervals, conformal.

numpy, scipy, scikit-learn and scikit-survival; no model code (the discrete survival curve is
the models' own, :func:`pathgen_batch.models.survival.survival_curve`). Every public function
checks its inputs and raises :class:`~pathgen_batch.errors.DataError` naming the bad input.
"""

from pathgen_batch.evaluation.bootstrap import BootstrapCI, bootstrap_ci, pooled_c_index_ci
from pathgen_batch.evaluation.conformal import (
    ClassificationConformal,
    IntervalConformal,
    average_set_size,
    average_width,
    class_scores,
    conformal_quantile,
    conformal_quantile_index,
    coverage,
    fit_classification,
    fit_interval,
    fit_survival_bins,
    known_bin_mask,
    min_calibration_size,
)
from pathgen_batch.evaluation.fidelity import (
    PER_GENE_COLUMNS,
    FidelityReport,
    expression_fidelity,
    mean_per_gene_pearson,
)
from pathgen_batch.evaluation.grade import (
    accuracy,
    balanced_accuracy,
    grade_metrics,
    macro_f1,
    macro_ovr_auc,
    quadratic_weighted_kappa,
)
from pathgen_batch.evaluation.multiplicity import benjamini_hochberg, holm
from pathgen_batch.evaluation.resampling import (
    DEFAULT_MARGIN,
    DEFAULT_MARGINS,
    CorrectedTest,
    Equivalence,
    compare_conditions,
    corrected_resampled_t,
    detectable_hazard_ratio,
    equivalence_tost,
    minimum_detectable_difference,
)
from pathgen_batch.evaluation.stats import PairedTest, paired_comparison
from pathgen_batch.evaluation.survival import (
    Concordance,
    EvaluationTimes,
    IntegratedBrier,
    SurvivalReport,
    TimeDependentAUC,
    UnoConcordance,
    evaluation_times,
    harrell_c_index,
    harrell_concordance,
    integrated_brier,
    survival_report,
    time_dependent_auc,
    uno_c_index,
)
from pathgen_batch.evaluation.survival_curves import (
    bin_probabilities_from_hazards,
    survival_at_times,
    survival_from_hazards,
)

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_MARGINS",
    "PER_GENE_COLUMNS",
    "BootstrapCI",
    "ClassificationConformal",
    "Concordance",
    "CorrectedTest",
    "Equivalence",
    "EvaluationTimes",
    "FidelityReport",
    "IntegratedBrier",
    "IntervalConformal",
    "PairedTest",
    "SurvivalReport",
    "TimeDependentAUC",
    "UnoConcordance",
    "accuracy",
    "average_set_size",
    "average_width",
    "balanced_accuracy",
    "benjamini_hochberg",
    "bin_probabilities_from_hazards",
    "bootstrap_ci",
    "class_scores",
    "compare_conditions",
    "conformal_quantile",
    "conformal_quantile_index",
    "corrected_resampled_t",
    "coverage",
    "detectable_hazard_ratio",
    "equivalence_tost",
    "evaluation_times",
    "expression_fidelity",
    "fit_classification",
    "fit_interval",
    "fit_survival_bins",
    "grade_metrics",
    "harrell_c_index",
    "harrell_concordance",
    "holm",
    "integrated_brier",
    "known_bin_mask",
    "macro_f1",
    "macro_ovr_auc",
    "mean_per_gene_pearson",
    "min_calibration_size",
    "minimum_detectable_difference",
    "paired_comparison",
    "pooled_c_index_ci",
    "quadratic_weighted_kappa",
    "survival_at_times",
    "survival_from_hazards",
    "survival_report",
    "time_dependent_auc",
    "uno_c_index",
]
