"""The policies: every module of this package with a ``POLICIES`` list registers its entries here.

An experiment's policy entry (:class:`testbed.core.config.PolicySpec`) has a ``name``, an
optional ``label`` and the policy's own keys; this module checks those keys against the
policy's :class:`~testbed.policies.base.Params` model, builds the policy, and says what it
needs from the bundle and what claim it is judged by. Adding a policy is adding a module.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotated_types import Ge, Le
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from testbed.core import costmodel
from testbed.core.config import PolicySpec, suggest
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.base import Params, Policy, PolicyType
from testbed.policies.context import PolicyContext, for_bundle, missing

if TYPE_CHECKING:
    from testbed.formats.bundle import Bundle

_NOT_POLICIES = {"base", "context", "fitting", "registry"}  # the modules that hold no policy


@functools.cache
def types() -> dict[str, PolicyType]:
    """Name -> policy type, from every policy module of the package, in name order."""
    found: dict[str, PolicyType] = {}
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name in _NOT_POLICIES:
            continue
        for ptype in importlib.import_module(f"{__package__}.{mod.name}").POLICIES:
            if ptype.name in found:
                raise RuntimeError(f"policy {ptype.name!r} is registered twice (testbed/policies/{mod.name}.py)")
            found[ptype.name] = ptype
    return dict(sorted(found.items()))


def names() -> list[str]:
    """Every policy name."""
    return list(types())


def keys_of(name: str) -> list[str] | None:
    """The keys the named policy takes besides ``name`` and ``label``; None for an unknown name."""
    ptype = types().get(name)
    return sorted(ptype.params.model_fields) if ptype else None


def _bounds_text(model: type[BaseModel], field: str) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in model.model_fields[field].metadata:
        if isinstance(m, Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, Le):
            hi = float(m.le)  # type: ignore[arg-type]
    return lo, hi


def _problem(ptype: PolicyType, err: ErrorDetails) -> str:
    """One pydantic error on a policy's keys, in the words the rest of ``testbed validate`` uses."""
    loc = ".".join(str(x) for x in err["loc"])
    key = str(err["loc"][0]) if err["loc"] else ""
    value = err.get("input")
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # as the model holds it
    if err["type"] == "extra_forbidden":
        takes = sorted(ptype.params.model_fields)
        return f".{key}: {ptype.name} takes no {key}" + (f" (it takes {', '.join(takes)})" if takes else "; remove it")
    if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        lo, hi = _bounds_text(ptype.params, key)
        if lo is not None and hi is not None:
            return f".{loc}: {value} is outside [{lo:g}, {hi:g}]"
        if lo == 0:
            return f".{loc}: {value} is negative; costs and weights are >= 0"
        return f".{loc}: {value} is {err['msg'].lower().removeprefix('input should be ')}"
    if err["type"] == "literal_error":
        choices = [str(c) for c in typing.get_args(ptype.params.model_fields[key].annotation)]
        return f".{loc}: {value!r} is not one of {choices}{suggest(str(value), choices)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f".{loc}: {msg} (got {value!r})" if err["type"] != "value_error" else f".{loc}: {msg}"


def parse(spec: PolicySpec) -> tuple[PolicyType, Params]:
    """The entry's policy type and its validated parameters (call :func:`check` first for the words)."""
    ptype = types()[spec.name]
    return ptype, ptype.params.model_validate(spec.model_extra or {})


def check(spec: PolicySpec, tiers: Sequence[str]) -> list[str]:
    """Problems with a policy entry in a run with ``tiers``, each starting with its sub-path (``.name: ...``)."""
    if spec.name not in types():
        return [f".name: unknown policy {spec.name!r}{suggest(spec.name, names())}"]
    ptype = types()[spec.name]
    try:
        params = ptype.params.model_validate(spec.model_extra or {})
    except ValidationError as e:
        return [_problem(ptype, err) for err in e.errors()]
    return ptype.check(params, tuple(tiers)) if ptype.check else []


def needs(names_: set[str]) -> set[str]:
    """The bundle tables the named policies read."""
    return set().union(*(types()[n].needs for n in names_ if n in types()))


def bundle_problems(spec: PolicySpec, bundle: Bundle) -> list[str]:
    """What ``bundle`` lacks for the entry's policy (empty for an unknown name: :func:`check` says that)."""
    if spec.name not in types():
        return []
    ptype = types()[spec.name]
    need = ptype.needs
    if ptype.needs_for is not None:
        try:
            need = ptype.needs_for(parse(spec)[1])
        except ValidationError:
            return []  # check() names what is wrong with the parameters
    return [f": {spec.name} needs {m}" for m in missing(bundle, need)]


def context_for(bundle: Bundle, split: str, seed: int, names_: set[str]) -> PolicyContext:
    """What the named policies need from ``bundle``'s split (tables are read only when a policy needs them)."""
    return for_bundle(bundle, split, seed, needs(names_))


def make(spec: PolicySpec, ctx: PolicyContext) -> Policy:
    """Build the policy an experiment entry names (assumes :func:`check` passed).

    ``ctx`` carries the run's tiers and what the learned policies need from the bundle
    (:func:`context_for`); a policy that needs no table takes ``PolicyContext(tiers)``.
    """
    ptype, params = parse(spec)
    need = ptype.needs_for(params) if ptype.needs_for else ptype.needs
    lacking = [n for n in sorted(need) if getattr(ctx, n) is None]
    if lacking:
        raise ValueError(f"policy {spec.name} needs the bundle's {', '.join(lacking)}: build its context with "
                         "policies.context_for")
    return ptype.build(spec.key, params, ctx)


def record(policy: Policy) -> dict[str, Any]:
    """What the manifest keeps of a policy after its run: its class, fitted values, the bandit's state."""
    rec: dict[str, Any] = {"class": type(policy).__name__}
    if policy.upper_bound:
        rec["upper_bound"] = "uses the labels; not deployable"
    return rec | policy.summary()


def claim_of(name: str) -> Claim | None:
    """The paper claim the named policy is judged by, if any."""
    ptype = types().get(name)
    return ptype.claim if ptype else None


def paper_cost(spec: PolicySpec, num_layers: int) -> CostModel | None:
    """The cost model the entry's verdict uses on a model of ``num_layers`` layers.

    Its paper's preset, keeping the paper's ratios on this depth (:meth:`CostModel.for_depth`),
    with the entry's own constants where its policy learns from them (``PolicyType.scored_by``);
    None for a policy with no paper preset.
    """
    ptype = types().get(spec.name)
    if ptype is None or ptype.cost_preset is None:
        return None
    preset = costmodel.PRESETS[ptype.cost_preset].for_depth(num_layers)
    if ptype.scored_by is None:
        return preset
    _, params = parse(spec)
    return ptype.scored_by(params, preset)
