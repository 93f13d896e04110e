"""fermodels: FER model registry, the seed models, losses, trainer and evaluator."""
from fermodels.registry import ModelCard, create_model, list_models, register_model

__all__ = ["ModelCard", "create_model", "list_models", "register_model"]
