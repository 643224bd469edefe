"""twistd plugin for freeq: lazy, imports nothing of freeq until the service is made."""
from twisted.application.service import ServiceMaker

freeq = ServiceMaker(
    "freeq",
    "freeq.tap",
    "freeq: an identity-aware, federated IRC server",
    "freeq",
)
