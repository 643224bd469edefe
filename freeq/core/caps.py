"""The IRCv3 capabilities this server offers."""
from __future__ import annotations

from typing import Optional

from freeq.core.metadata import CAP_VALUE

#: Capability name -> value advertised to ``CAP LS 302`` clients ("" for none).
CAPABILITIES: dict[str, str] = {
    "account-notify": "",
    "account-tag": "",
    "away-notify": "",
    "batch": "",
    "cap-notify": "",
    "chghost": "",
    "draft/channel-rename": "",  # freeq.core.rename
    "draft/chathistory": "",
    "draft/message-redaction": "",  # freeq.core.redaction
    "draft/metadata-2": CAP_VALUE,  # freeq.core.metadata
    "draft/read-marker": "",
    "draft/multiline": "max-bytes=40000,max-lines=100",  # freeq.state.multiline.CAP_VALUE
    "echo-message": "",
    "extended-join": "",
    "extended-monitor": "",  # freeq.core.monitor.monitor_extended
    "invite-notify": "",
    "labeled-response": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "ATPROTO-CHALLENGE,PLAIN",  # PLAIN dropped with --sasl-plain off (IRCServer.sasl_mechanisms)
    "server-time": "",
    "setname": "",
    "standard-replies": "",
    "userhost-in-names": "",
}


def cap_ls_tokens(with_values: bool, values: Optional[dict[str, str]] = None) -> list[str]:
    """The tokens of a ``CAP LS`` reply (values only for version 302 and later); ``values`` overrides
    advertised values that depend on the configuration."""
    out = []
    for name, value in CAPABILITIES.items():
        if values is not None:
            value = values.get(name, value)
        out.append(f"{name}={value}" if with_values and value else name)
    return out
