"""MIL models. Each module registers its class with ``@register_model``; import it below (one line)."""
from trainer.models.registry import build_model, list_models, register_model  # noqa: F401
from trainer.models.base import MILModel  # noqa: F401

from trainer.models import abmil  # noqa: F401,E402
from trainer.models import sam_mil  # noqa: F401,E402
from trainer.models import mean_pool  # noqa: F401,E402
from trainer.models import max_pool  # noqa: F401,E402
from trainer.models import abmil_gated  # noqa: F401,E402
from trainer.models import transmil  # noqa: F401,E402
from trainer.models import dsmil  # noqa: F401,E402
from trainer.models import clam_sb  # noqa: F401,E402
