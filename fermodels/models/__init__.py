"""Model families; importing this package registers every model with ``fermodels.registry``."""
from fermodels.models import baselines, cmnet, convcut, pcda, pcnn  # noqa: F401  (registration)
