"""Link and CPU schedules during a run: the steps due, applied to the agents and the kernel, and recorded.

The issuer calls :meth:`Schedules.tick` between issues. A link step reshapes its hop (tc on
the devices, and under the userspace backend a :class:`~agents.protocol.Shape` to every
sending agent); a CPU step sends :class:`~agents.protocol.Limit` to the agents it names, which
answer :class:`~agents.protocol.Limited` with what they wrote. Every step goes into the
manifest (``shaping.schedule_applied``, ``cpu.applied``) with when it was due and applied.

With ``run.schedule_clock: policy`` the schedules start again at each policy:
:meth:`Schedules.restart` puts every link and cap back as configured, so every policy meets
the same shortage. ``changes`` counts the steps applied, so an adaptive policy knows that the
resources it measured have changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents import protocol as p
from testbed.core.clock import Clock
from testbed.core.config import CpuStep, Experiment, LinkProfile
from testbed.core.hops import CONTROLLER, link_ends
from testbed.devices import shaping
from testbed.devices.fleet import Fleet
from testbed.run.session import AgentSession


def cpu_kind(step: CpuStep) -> str | None:
    """The cap a step sets (None for ``lift``)."""
    if step.lift:
        return None
    return "cores" if step.cores is not None else "max_freq_mhz"


class Schedules:
    """Applies the experiment's link and CPU schedules at the issuer's time base, and records them."""

    def __init__(self, exp: Experiment, fleet: Fleet | None, session: AgentSession, clock: Clock,
                 schedule_t: Callable[[], float], record: Callable[[], None], manifest: Any):
        self.exp, self.fleet, self.session, self.clock = exp, fleet, session, clock
        self.schedule_t = schedule_t  # seconds into the schedules (the issuer's)
        self.save = record  # writes the manifest
        self.manifest = manifest
        self.links_applied: set[tuple[str, int]] = set()
        self.cpu_applied: set[int] = set()
        self.capped: dict[str, set[str]] = {}  # device -> cap kinds it holds now
        self.changes = 0  # steps applied so far (an adaptive policy re-measures when it moves)
        self.log: list[str] = []  # what each step did, in words (an adaptive policy's plan says why it re-planned)
        self.policy: str | None = None  # the policy the steps happen under (schedule_clock: policy)
        self._limit_seq = 0
        self._pending: dict[int, dict[str, Any]] = {}  # Limit seq -> its record (filled by Limited)

    @property
    def links(self) -> dict[str, LinkProfile]:
        """The shaped links of the run."""
        return self.exp.shaping.links

    def tick(self) -> None:
        """Apply the steps that are due."""
        t = self.schedule_t()
        if self.fleet is not None and self.fleet.backend != "none" and any(p.schedule for p in self.links.values()):
            for hop, i, profile in shaping.due_steps(self.links, t, self.links_applied):
                self.links_applied |= {(hop, j) for j in range(i + 1)}
                self._reshape(hop, i, profile, t)
        for i, step in enumerate(self.exp.cpu.schedule):
            if i not in self.cpu_applied and step.at_s <= t:
                self.cpu_applied.add(i)
                self._limit(i, step, t)

    def _reshape(self, hop: str, i: int | None, profile: LinkProfile, t: float) -> None:
        """One link step (``i`` None: back to the configured profile); recorded in ``shaping.schedule_applied``."""
        assert self.fleet is not None
        rec: dict[str, Any] = {"hop": hop, "step": -1 if i is None else i,
                               "at_s": 0.0 if i is None else self.links[hop].schedule[i].at_s,  # type: ignore[index]
                               "applied_at_s": round(t, 6), "unix_ns": self.clock.time_ns(),
                               "profile": profile.model_dump(exclude={"schedule"})}
        if self.policy is not None:
            rec["policy"] = self.policy
        if self.fleet.backend == "userspace":
            # the sending agent of a device hop; for a controller link the tier's agent (Results, and on the
            # first tier the Work arriving too)
            a, b = link_ends(hop)
            ctl = a == CONTROLLER
            senders = self.session.tier_agents(b if ctl else a)  # every device of the sending tier
            for sender in senders:
                self.session.send(sender, p.Shape(rec["step"], profile.delay_ms, profile.jitter_ms,
                                                  "controller" if ctl else "data"))
            rec["userspace"] = {"devices": [x.device_id for x in senders], "link": "controller" if ctl else "data",
                                "delay_ms": profile.delay_ms, "jitter_ms": profile.jitter_ms}
        kernel = self.fleet.reshape(hop, profile)
        if kernel:
            rec["kernel"] = kernel
        self.manifest.shaping.setdefault("schedule_applied", []).append(rec)
        self.changes += 1
        shown = ", ".join(f"{k} {v:g}" for k, v in rec["profile"].items() if v) or "unshaped"
        self.log.append(f"link {hop} {'step ' + str(i) if i is not None else 'back'}: {shown}")
        self.save()

    def _targets(self, device: str) -> list[str]:
        """The device ids a step's ``device`` names (a device, or every device of a tier)."""
        return [a.device_id for a in self.session.agents.values() if device in (a.device_id, a.tier)]

    def _limit(self, i: int | None, step: CpuStep | None, t: float, devices: list[str] | None = None) -> None:
        """One CPU step (``i`` None: lift every cap on ``devices``); recorded in ``cpu.applied``."""
        targets = (devices or []) if step is None else self._targets(step.device)
        kind = None if step is None else cpu_kind(step)
        value = 0.0 if step is None or kind is None else float(getattr(step, kind))
        for dev in targets:
            kinds = [kind] if kind is not None else sorted(self.capped.get(dev, ()))
            for k in kinds:
                self._limit_seq += 1
                rec = {"step": -1 if i is None else i, "at_s": 0.0 if step is None else step.at_s,
                       "applied_at_s": round(t, 6), "unix_ns": self.clock.time_ns(), "device": dev, "kind": k,
                       "value": value, "lift": not value, **({"policy": self.policy} if self.policy else {})}
                self.session.send(self.session.agents[dev], p.Limit(self._limit_seq, k, value))
                self._pending[self._limit_seq] = rec
                self.manifest.cpu = self.manifest.cpu or {"schedule": [s.model_dump() for s in self.exp.cpu.schedule],
                                                          "applied": []}
                self.manifest.cpu["applied"].append(rec)
                if value:
                    self.capped.setdefault(dev, set()).add(k)
                else:
                    self.capped.get(dev, set()).discard(k)
        self.changes += 1
        self.log.append(f"cpu {step.device} step {i}: {kind or 'lift'} {value or ''}".rstrip() if step is not None
                        else f"cpu caps lifted on {', '.join(targets)}")
        self.save()

    def on_limited(self, msg: p.Limited) -> None:
        """An agent's answer to a Limit: what it wrote, and when (its clock)."""
        rec = self._pending.pop(msg.seq, None)
        if rec is not None and rec["device"] == msg.agent_id:
            rec["applied"] = msg.applied
            rec["agent_unix_ns"] = msg.t_ns
            self.save()

    def since(self, changes: int) -> str:
        """The steps applied after the ``changes``-th, in words."""
        return "; ".join(self.log[changes:])

    @property
    def settled(self) -> bool:
        """Every Limit sent has been answered."""
        return not self._pending

    def restart(self, policy: str) -> None:
        """``schedule_clock: policy``: every link and cap back as configured, the schedules from their start."""
        t = self.schedule_t()
        self.policy = policy  # the resets are recorded as the start of this policy's schedule
        for hop in sorted({h for h, _ in self.links_applied}):
            self._reshape(hop, None, self.links[hop], t)
        capped = sorted(d for d, kinds in self.capped.items() if kinds)
        if capped:
            self._limit(None, None, t, capped)
        self.links_applied, self.cpu_applied = set(), set()
