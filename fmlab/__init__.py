"""fmlab: an open, notebook-driven workbench for Apple Foundation Models adapters."""

from fmlab.errors import FmlabError
from fmlab.model.config import LoRAConfig, ModelConfig, from_tamm_json, preset
from fmlab.model.transformer import Transformer, build_model, count_parameters

__version__ = "0.1.0"  # pyproject reads this line without importing fmlab: keep it a plain string

__all__ = [
    "FmlabError",
    "LoRAConfig",
    "ModelConfig",
    "Transformer",
    "__version__",
    "build_model",
    "count_parameters",
    "from_tamm_json",
    "preset",
]
