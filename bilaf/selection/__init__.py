"""BiLAF selection engine: pure numpy/torch algorithms, features in, picks with provenance out.

Stages (each usable on its own, e.g. as one Dagster asset each):
``select_cores`` -> ``denoise`` -> ``select_boundary``; or ``select`` for a whole method by name
(``list_methods()``). docs/algorithm.md specifies the algorithm; ``variants`` holds the paper-vs-code
switches.
"""

from .activeft import ActiveFTParams
from .boundary import allocate_budget, apportion, select_boundary
from .classes import LABEL_AWARE, class_regions, select_class_boundary
from .cores import CORE_METHODS, KMeansParams, select_cores
from .denoise import IdcParams, denoise
from .methods import MARGIN, default_n_cores, list_methods, register_method, select
from .results import ClassRegions, ClassStats, ClusterStats, CoreSelection, DenoisedPool, Pick, SelectionResult
from .variants import VARIANTS, Stage2Settings

__all__ = [
    "ActiveFTParams",
    "CORE_METHODS",
    "ClassRegions",
    "ClassStats",
    "ClusterStats",
    "CoreSelection",
    "DenoisedPool",
    "IdcParams",
    "KMeansParams",
    "LABEL_AWARE",
    "MARGIN",
    "Pick",
    "SelectionResult",
    "Stage2Settings",
    "VARIANTS",
    "allocate_budget",
    "apportion",
    "class_regions",
    "default_n_cores",
    "denoise",
    "list_methods",
    "register_method",
    "select",
    "select_boundary",
    "select_class_boundary",
    "select_cores",
]
