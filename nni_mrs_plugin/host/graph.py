"""Walking a traced graph forward from a node: what every channel-following pass here shares."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Set, Tuple

import torch

__all__ = ["new_users"]


def new_users(node: torch.fx.Node, seen: Set[torch.fx.Node],
              modules: Dict[str, Any]) -> Iterator[Tuple[torch.fx.Node, Any, Any]]:
    """Each user of ``node`` not in ``seen`` (added to it now), with its module (``call_module`` nodes, else None)
    and the name of the function or method it calls."""
    for user in node.users:
        if user in seen:
            continue
        seen.add(user)
        module = modules.get(user.target) if user.op == "call_module" else None
        yield user, module, getattr(user.target, "__name__", user.target)
