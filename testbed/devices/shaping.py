"""Link shaping as argv lists: pure functions, no shell strings, nothing run here.

A hop is shaped in both directions by shaping the egress of each of its two ends. Two
backends:

- ``netem`` (real boards' kernels): an htb root with one class at the rate limit, and
  netem (delay, jitter, loss) under it; without a rate, netem alone at the root; jitter
  always comes with a netem rate, which keeps packets in order (:func:`_netem_args`);
- ``userspace`` (kernels without netem, like these CI machines): the kernel shapes the rate
  (htb, as above, without netem) and the agents apply delay, jitter and loss to their
  outgoing messages (:func:`userspace_params`); the manifest and report say ``userspace``.

``teardown`` removes what ``plan`` installs; the ownership record keeps both.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.core.config import LinkProfile

BACKENDS = ("netem", "userspace")


def _num(x: float) -> str:
    """Compact decimal for tc: 20.0 -> '20', 0.5 -> '0.5'."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Step:
    """One command and what it is for (shown by ``testbed plan``)."""

    argv: list[str]
    why: str


def _rate(dev: str, rate_mbit: float, change: bool) -> list[Step]:
    rate = f"{_num(rate_mbit)}mbit"
    root = [] if change else [Step(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default",
                                    "1"], "htb root: every packet goes to class 1:1")]
    return root + [
        Step(["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil",
              rate], f"rate limit {rate}"),
    ]


#: netem's own rate where a jittered link has none (fast enough never to be the limit): it keeps the order
ORDER_KEEPING_RATE_MBIT = 100_000.0


def _netem_args(p: LinkProfile) -> list[str]:
    """Netem's arguments for ``p``; with jitter, a netem ``rate`` too, so packets leave in the order they came.

    netem schedules each packet at its own delay draw, so plain jitter reorders a stream; with
    a rate it times each packet from the one before it (tc-netem(8), "rate"), which keeps the
    order. The rate is the link's (htb limits it as well) or :data:`ORDER_KEEPING_RATE_MBIT`.
    """
    args = ["netem"]
    if p.delay_ms or p.jitter_ms:
        args += ["delay", f"{_num(p.delay_ms)}ms"] + ([f"{_num(p.jitter_ms)}ms"] if p.jitter_ms else [])
    if p.loss_pct:
        args += ["loss", f"{_num(p.loss_pct)}%"]
    if p.jitter_ms:
        args += ["rate", f"{_num(p.rate_mbit or ORDER_KEEPING_RATE_MBIT)}mbit"]
    return args


def plan(dev: str, profile: LinkProfile, backend: str, change: bool = False) -> list[Step]:
    """Commands that shape the egress of interface ``dev`` with ``profile`` under ``backend``.

    ``change``: a schedule step on an interface this run already shaped; the htb root stays
    (htb cannot be replaced in place), its class and the netem under it are replaced.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: one of {BACKENDS}")
    delayed = bool(profile.delay_ms or profile.jitter_ms or profile.loss_pct)
    steps: list[Step] = []
    if profile.rate_mbit:
        steps += _rate(dev, profile.rate_mbit, change)
        if backend == "netem" and delayed:
            steps.append(Step(["tc", "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:",
                               *_netem_args(profile)], "netem under the rate class: delay, jitter, loss"))
    elif backend == "netem" and delayed:
        steps.append(Step(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", *_netem_args(profile)],
                          "netem at the root: delay, jitter, loss"))
    return steps


def teardown(dev: str) -> Step:
    """The command that removes whatever :func:`plan` put on ``dev`` (its root qdisc)."""
    return Step(["tc", "qdisc", "del", "dev", dev, "root"], "remove the run's qdiscs")


def show(dev: str) -> Step:
    """The command whose output is read back into the manifest after shaping."""
    return Step(["tc", "-s", "qdisc", "show", "dev", dev], "read the qdisc state back")


def show_class(dev: str) -> Step:
    """The command that reads the htb classes (their rates) back, beside :func:`show`."""
    return Step(["tc", "-s", "class", "show", "dev", dev], "read the rate classes back")


def kernel_part(profile: LinkProfile, backend: str) -> tuple[float | None, ...]:
    """The values of ``profile`` the kernel applies under ``backend``.

    The rate, and under netem delay, jitter and loss too. A schedule step that leaves them as
    they are runs no tc.
    """
    if backend == "netem":
        return profile.rate_mbit, profile.delay_ms, profile.jitter_ms, profile.loss_pct
    return (profile.rate_mbit,)


def userspace_params(profile: LinkProfile, backend: str) -> dict[str, float]:
    """What the agent applies to its outgoing messages: nothing under netem (the kernel does it)."""
    if backend != "userspace":
        return {}
    return {k: v for k, v in (("delay_ms", profile.delay_ms), ("jitter_ms", profile.jitter_ms),
                              ("loss_pct", profile.loss_pct)) if v}


def at(profile: LinkProfile, t_s: float) -> LinkProfile:
    """The profile in force ``t_s`` seconds into the run (schedule steps replace the values they give)."""
    current = profile.model_dump(exclude={"schedule"})
    for step in profile.schedule or []:
        if step.at_s <= t_s:
            current |= {k: v for k, v in step.model_dump(exclude={"at_s"}).items() if v is not None}
    return LinkProfile.model_validate(current)


def controller_needs(links: dict[str, LinkProfile], backend: str) -> dict[str, list[str]]:
    """What the controller's own kernel must have for its end of the ``controller-<tier>`` links.

    ``tc``, ``htb`` (a rate) and ``netem`` (delay, jitter or loss under the netem backend), each
    with the links that need it, over the profile as it starts and every schedule step.
    """
    need: dict[str, list[str]] = {}
    for hop, prof in links.items():
        if not hop.startswith("controller-"):
            continue
        for p in [prof, *(at(prof, s.at_s) for s in prof.schedule or [])]:
            for step in plan("-", p, backend):
                for what in ("tc", "htb", "netem"):
                    if (what == "tc" or what in step.argv) and hop not in need.setdefault(what, []):
                        need[what].append(hop)
    return {k: v for k, v in need.items() if v}


def due_steps(links: dict[str, LinkProfile], t_s: float, applied: set[tuple[str, int]]
              ) -> list[tuple[str, int, LinkProfile]]:
    """Schedule steps due at ``t_s`` not yet in ``applied`` (hop, step index): (hop, index, profile now).

    Where several steps of one hop fell due at once, only the latest is returned (it includes
    the others' values); steps come in time order, so the caller marks every index up to it.
    """
    out: dict[str, tuple[str, int, LinkProfile]] = {}
    for hop, profile in links.items():
        for i, step in enumerate(profile.schedule or []):
            if step.at_s <= t_s and (hop, i) not in applied:
                out[hop] = (hop, i, at(profile, step.at_s))
    return list(out.values())


def applicable(links: dict[str, LinkProfile], backend: str, remote: bool) -> tuple[str, list[str]]:
    """The backend a run can apply to ``links`` and the reasons it cannot, if any.

    ``remote``: the agents are deployed over SSH, so the kernel's part (rates, netem) is applied
    on the devices' own interfaces. Loopback agents share ``lo``, which is never shaped: there
    only the userspace delay and jitter apply. ``auto`` stays ``auto`` for remote runs (the
    preflight picks netem where every device has it, else userspace).
    """
    if not links or backend == "none":
        return "none", []
    chosen = backend if backend != "auto" else ("auto" if remote else "userspace")
    problems = []
    if chosen == "netem" and not remote:
        problems.append("shaping.backend: netem runs tc on the devices over SSH; these agents are local processes "
                        "sharing lo, which must not be shaped; use backend: userspace, or SSH devices (`testbed "
                        "emulate up` makes some)")
    for name, p in links.items():
        if not remote and (p.rate_mbit or p.loss_pct):
            problems.append(f"shaping.links.{name}: rate_mbit and loss_pct need the kernel on the devices' own "
                            "interfaces; loopback agents share lo, which must not be shaped (use SSH devices, "
                            "e.g. `testbed emulate up`)")
        elif remote and p.loss_pct and chosen == "userspace":
            problems.append(f"shaping.links.{name}.loss_pct: loss needs netem (a lost TCP segment is a retransmission, "
                            "not a lost message, so the agents do not fake it); use backend: netem on kernels that "
                            "have it, or drop loss_pct")
        for i, step in enumerate(p.schedule or []):
            where = f"shaping.links.{name}.schedule[{i}]"
            if not remote and (step.rate_mbit or step.loss_pct):
                problems.append(f"{where}: rate_mbit and loss_pct need the kernel on the devices' own interfaces; "
                                "loopback agents share lo (use SSH devices, e.g. `testbed emulate up`)")
            elif remote and step.loss_pct and chosen == "userspace":
                problems.append(f"{where}.loss_pct: loss needs netem; use backend: netem, or drop loss_pct")
    return chosen, problems
