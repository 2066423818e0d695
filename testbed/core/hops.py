"""Hops and links: one type for what a sample crosses and what shaping applies to.

A run's tiers are in order (``mobile, edge, cloud`` today; two tiers or more per run later).
A sample crosses these hops:

- the **issue** hop, controller -> first tier (``controller_mobile``);
- one **offload** hop per pair of neighbouring tiers (``mobile_edge``, ``edge_cloud``);
- the **return** hop, from whichever tier finished back to the controller (``return``).

A **link** is what shaping and the cost model name, with a dash: the offload hops' links
(``mobile-edge``) and a ``controller-<tier>`` link per tier. Column stems use an underscore
(``net_ms_mobile_edge``). Everything that names a hop or a link derives it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

CONTROLLER = "controller"
#: the finishing tier, whichever it is: the source of the return hop
EXIT = "exit"


@dataclass(frozen=True)
class Hop:
    """One hop: from ``src`` to ``dst`` (a tier, ``controller``, or ``exit`` for the return hop's source)."""

    src: str
    dst: str

    @property
    def kind(self) -> Literal["issue", "offload", "return"]:
        """``issue`` (controller to the first tier), ``offload`` (tier to tier) or ``return`` (to the controller)."""
        if self.src == CONTROLLER:
            return "issue"
        return "return" if self.dst == CONTROLLER else "offload"

    @property
    def column(self) -> str:
        """The stem of the hop's result columns: ``mobile_edge``, ``controller_mobile``, ``return``."""
        return "return" if self.kind == "return" else f"{self.src}_{self.dst}"

    @property
    def link(self) -> str:
        """The link's name in experiment files and cost models: ``mobile-edge``, ``controller-mobile``."""
        if self.kind == "return":
            raise ValueError("the return hop has no link of its own: it uses controller-<finishing tier>")
        return f"{self.src}-{self.dst}"

    @classmethod
    def parse(cls, name: str) -> Hop:
        """A hop from its link (``mobile-edge``) or column stem (``mobile_edge``, ``return``)."""
        if name == "return":
            return cls(EXIT, CONTROLLER)
        src, sep, dst = name.replace("_", "-").partition("-")
        if not sep or not src or not dst or "-" in dst:
            raise ValueError(f"{name!r} is not a hop: give <from>-<to>, e.g. mobile-edge or controller-mobile")
        return cls(src, dst)


def offload_hops(tiers: Sequence[str]) -> list[Hop]:
    """The tier-to-tier hops, in order."""
    return [Hop(a, b) for a, b in zip(tiers, tiers[1:], strict=False)]


def data_hops(tiers: Sequence[str]) -> list[Hop]:
    """Every hop a sample can cross, in order: issue, offloads, return."""
    return [Hop(CONTROLLER, tiers[0]), *offload_hops(tiers), Hop(EXIT, CONTROLLER)]


def shaped_links(tiers: Sequence[str]) -> list[str]:
    """Every link shaping may name: the controller's link to each tier, then the offload links."""
    return [f"{CONTROLLER}-{t}" for t in tiers] + [h.link for h in offload_hops(tiers)]


def link_ends(link: str) -> tuple[str, str]:
    """``mobile-edge`` -> (mobile, edge); ``controller-mobile`` -> (controller, mobile)."""
    hop = Hop.parse(link)
    return hop.src, hop.dst
