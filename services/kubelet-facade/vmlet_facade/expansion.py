"""``$(VAR)`` references in a container's command and args, expanded as a kubelet expands them.

``$(NAME)`` becomes the value of the container's environment variable NAME; a reference to a
name the container does not define stays as written; ``$$`` is an escaped ``$`` (``$$(NAME)``
stays ``$(NAME)``); any other ``$``, and a ``$(`` without its ``)``, stays as written.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["expand"]


def expand(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its ``$(VAR)`` references to ``env`` expanded."""
    if "$" not in text:
        return text
    out: list[str] = []
    at, end = 0, len(text)
    while at < end:
        dollar = text.find("$", at)
        if dollar == -1 or dollar + 1 >= end:
            out.append(text[at:])
            break
        out.append(text[at:dollar])
        after = text[dollar + 1]
        if after == "$":
            out.append("$")
            at = dollar + 2
        elif after == "(" and (close := text.find(")", dollar + 2)) != -1:
            name = text[dollar + 2:close]
            out.append(env[name] if name in env else text[dollar:close + 1])
            at = close + 1
        elif after == "(":
            out.append(text[dollar:])
            break
        else:
            out.append(text[dollar:dollar + 2])
            at = dollar + 2
    return "".join(out)
