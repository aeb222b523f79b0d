"""The osteoporosis engine (seed 003): deep radiograph features, PCA, cluster-based component
selection, clinical variables, a fully connected network, and permutation importance."""

from engines.osteoporosis.head import FusionHead
from engines.osteoporosis.importance import permutation_importance, plot_importance
from engines.osteoporosis.reduction import FeatureReduction, fit_reduction

__all__ = [
    "FeatureReduction",
    "FusionHead",
    "fit_reduction",
    "permutation_importance",
    "plot_importance",
]
