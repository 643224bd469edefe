"""Texts for the HELP command (first line is the title)."""
from __future__ import annotations

HELP: dict[str, str] = {
    "*": """freeq help
Commands: ADMIN AWAY CAP CONNECT HELP INFO INVITE ISON JOIN KICK KILL LINKS
LIST LUSERS MODE MONITOR MOTD NAMES NICK NOTICE OPER PART PING PRIVMSG QUIT
SETNAME SQUIT TAGMSG TIME TOPIC USER USERHOST VERSION WALLOPS WHO WHOIS WHOWAS
Type HELP <command> for details.""",
    "JOIN": """JOIN <#channel>[,<#channel>...] [<key>[,<key>...]]
Joins channels, with keys for +k channels. JOIN 0 leaves every channel.""",
    "PART": """PART <#channel>[,<#channel>...] [:<reason>]
Leaves channels.""",
    "PRIVMSG": """PRIVMSG <target>[,<target>...] :<text>
Sends a message to nicks or channels. @#channel reaches only operators, +#channel voiced users and operators.""",
    "NOTICE": """NOTICE <target>[,<target>...] :<text>
Like PRIVMSG, but never triggers automatic replies.""",
    "MODE": """MODE <#channel> [<modes> [<arguments>]] / MODE <nick> [<modes>]
Channel modes: b e I (lists), k (key), l (limit), i m n p s t, o v (status).
User modes: i (invisible), w (wallops), B (bot); o is granted by OPER.""",
    "TOPIC": """TOPIC <#channel> [:<topic>]
Shows or sets the topic.""",
    "KICK": """KICK <#channel> <nick>[,<nick>...] [:<reason>]
Removes users from a channel (channel operators only).""",
    "INVITE": """INVITE <nick> <#channel>
Invites a user into a channel; with no arguments, lists your pending invites.""",
    "WHO": """WHO <mask|#channel> [%<fields>[,<token>]]
Lists users; WHOX fields: t c u i h s n f d l a o r.""",
    "WHOIS": """WHOIS <nick>[,<nick>...]
Shows information about users.""",
    "MONITOR": """MONITOR + <nicks> / - <nicks> / C / L / S
Tells you when nicks come online or go offline.""",
    "OPER": """OPER <name> <password>
Makes you a server operator.""",
    "LINKS": """LINKS [[<server>] <mask>]
Lists the servers of the federation matching <mask>: name, the server it is linked
through, and hop count. Operators also see endpoint ids, link trust and held peers.""",
    "SQUIT": """SQUIT <server|endpoint id> [:<reason>]
Operators only: drops the federation link to a directly linked server and holds it
(neither dialled nor accepted) until CONNECT.""",
    "CONNECT": """CONNECT <server|endpoint id>
Operators only: releases a link held by SQUIT; configured peers are dialled at once.""",
    "AWAY": """AWAY [:<message>]
Marks you away (with a message) or back (without).""",
    "LIST": """LIST [<#channel>|<filters>]
Lists channels. Filters: >n <n (users), C>m C<m (created minutes ago), T>m T<m (topic age), masks.""",
}
