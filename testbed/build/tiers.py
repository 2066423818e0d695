"""Cutting a layered model into tiers and placing exits: pure functions, no torch.

``--tiers mobile:1-4,edge:5-8,cloud:9-12`` (or two tiers, ``mobile:1-4,cloud:5-12``; any
names, in the order a sample crosses them) and ``--exits 4,8`` (or ``all``) are parsed
and checked here, so that a bad cut is refused before anything is loaded or trained.
Layers are 1-based and inclusive, as papers count them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.protocol import tier_name_problem


class CutError(ValueError):
    """A tier cut or an exit list that does not fit the model."""


@dataclass(frozen=True)
class Cut:
    """Which layers each tier runs and where the exits are.

    Attributes:
        tiers: tier -> (first_layer, last_layer), in the order a sample crosses them, covering 1..num_layers.
        exits: sorted exit layers; every tier boundary is one (a tier always ends in an exit).
        num_layers: depth of the model.
    """

    tiers: dict[str, tuple[int, int]]
    exits: tuple[int, ...]
    num_layers: int

    @property
    def names(self) -> tuple[str, ...]:
        """The tiers, in order."""
        return tuple(self.tiers)

    @property
    def first(self) -> str:
        """The tier that takes the model's input."""
        return self.names[0]

    @property
    def last(self) -> str:
        """The tier that finishes every sample it gets."""
        return self.names[-1]

    def next_of(self, tier: str) -> str | None:
        """The tier after ``tier``; None for the last."""
        i = self.names.index(tier)
        return self.names[i + 1] if i + 1 < len(self.names) else None

    def boundary(self, tier: str) -> int:
        """The last layer of ``tier`` (where its exit head sits)."""
        return self.tiers[tier][1]

    def tier_of(self, layer: int) -> str:
        """The tier that runs ``layer``."""
        for tier, (first, last) in self.tiers.items():
            if first <= layer <= last:
                return tier
        raise CutError(f"layer {layer} is outside 1..{self.num_layers}")

    def exits_in(self, tier: str) -> list[int]:
        """Exit layers that ``tier`` computes, in order (its boundary last)."""
        first, last = self.tiers[tier]
        return [e for e in self.exits if first <= e <= last]


def parse_tiers(text: str) -> dict[str, tuple[int, int]]:
    """Parse ``mobile:1-4,edge:5-8,cloud:9-12`` (a single layer may be written ``edge:5``)."""
    out: dict[str, tuple[int, int]] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, rng = part.partition(":")
        if not sep:
            raise CutError(f"--tiers {text!r}: {part!r} is not TIER:FIRST-LAST (e.g. mobile:1-4)")
        lo, dash, hi = rng.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise CutError(f"--tiers {text!r}: {rng!r} is not a layer range FIRST-LAST of integers") from None
        if name.strip() in out:
            raise CutError(f"--tiers {text!r}: tier {name.strip()!r} appears twice")
        out[name.strip()] = (first, last)
    return out


def parse_exits(text: str | list[int] | None) -> list[int] | None:
    """Parse ``4,8`` into [4, 8]; ``all`` or None means an exit after every layer (returns None)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return None
    if isinstance(text, list):
        return [int(x) for x in text]
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CutError(f"--exits {text!r}: give layer numbers like 4,8 or 'all'") from None


def make_cut(tiers: dict[str, tuple[int, int]] | dict[str, list[int]], exits: list[int] | None,
             num_layers: int) -> Cut:
    """Check ``tiers`` and ``exits`` against a model of ``num_layers`` layers.

    Two or more tiers with valid names (mobile, edge, cloud; or two, such as mobile and cloud),
    in the order a sample crosses them, contiguous (no overlap, no gap), from layer 1 to
    ``num_layers``. Exits default to every layer; tier boundaries are always exits. Each
    problem names the argument and the fix.
    """
    names = list(tiers)
    bad_names = [e for n in names if (e := tier_name_problem(n))]
    if bad_names or len(names) < 2:
        raise CutError(f"--tiers names {names}: " + ("; ".join(bad_names) or "give two tiers or more")
                       + f" (e.g. mobile:1-{max(1, num_layers // 3)},edge:...,cloud:...-{num_layers}, or "
                       f"mobile:1-{max(1, num_layers // 2)},cloud:...-{num_layers})")
    cut: dict[str, tuple[int, int]] = {}
    expect = 1
    for tier in names:
        rng = tuple(tiers[tier])
        if len(rng) != 2:
            raise CutError(f"--tiers {tier}: {list(rng)} is not [first, last]")
        first, last = int(rng[0]), int(rng[1])
        if last < first:
            raise CutError(f"--tiers {tier}:{first}-{last}: the range runs backwards; write {tier}:{last}-{first}")
        if first < expect:
            raise CutError(f"--tiers {tier}:{first}-{last} overlaps the previous tier, which ends at layer "
                           f"{expect - 1}; start {tier} at layer {expect}")
        if first > expect:
            raise CutError(f"--tiers {tier}:{first}-{last} leaves layers {expect}-{first - 1} in no tier; "
                           f"start {tier} at layer {expect}")
        cut[tier] = (first, last)
        expect = last + 1
    if expect - 1 != num_layers:
        raise CutError(f"--tiers ends at layer {expect - 1} but the model has {num_layers} layers; "
                       f"end the {names[-1]} tier at {num_layers}")
    chosen = list(range(1, num_layers + 1)) if exits is None else list(exits)
    bad = [e for e in chosen if not 1 <= e <= num_layers]
    if bad:
        raise CutError(f"--exits {bad}: beyond the model's depth; exits must lie in 1..{num_layers}")
    if len(set(chosen)) != len(chosen):
        raise CutError(f"--exits {chosen}: a layer appears twice")
    boundaries = {cut[t][1] for t in names}
    return Cut(cut, tuple(sorted(set(chosen) | boundaries)), num_layers)


def exit_output(layer: int, cut: Cut) -> str:
    """ONNX output name of the exit after ``layer``: ``logits`` at a tier boundary, else ``exit_L<layer>``."""
    return "logits" if layer == cut.boundary(cut.tier_of(layer)) else f"exit_L{layer}"
