"""Development entry point: ``twistd -ny freeq.tac`` runs freeq with its defaults
(loopback listeners, data in ./freeq-data). Production uses ``twistd freeq``.
"""
from twisted.application import service
from twisted.internet import reactor

from freeq.tap import Options, build_service, config_from_options
import os

_options = Options()
_options.parseOptions([])
application = service.Application("freeq")
build_service(config_from_options(_options, os.environ), reactor).setServiceParent(application)
