"""The policies compared side by side (METHOD §5-7), each a row of the report.

Runs in the CLI process. ``guard`` rows are requests with babelgate guard parameters (the hook's
own policies and routing at three thresholds); ``baseline`` rows are AdaSteer and CAST in the same
hook machinery; ``refuse`` is the server's ``refuse`` action: the server runs the request
exactly as under the row it names (routing, or ``shadow``: scored, nothing changed, which with
the refuse action is ``babelgate serve``'s default) and, when the verdict is harmful, answers
with the templated refusal (``server.refusal_templates``) instead of the generation. Its rows
are therefore built from the generations of that row (same requests, same verdicts), not
generated twice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from babelgate.server.engine.types import Policy


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kind: str  # "guard" | "baseline" | "refuse"
    description: str
    guard_policy: Policy | None = None  # GuardParams.policy for guard rows
    threshold: str | None = None  # "zero-shot" | "k1" | "k4" for routing rows
    method: str | None = None  # "adasteer" | "cast" for baseline rows
    source: str | None = None  # for refuse: the routing row whose requests it reuses
    scale: float = 1.0  # baseline rows: multiplies the fitted strength (``METHOD@SCALE``)


POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec("none", "guard", "no intervention (the model as served)", guard_policy="none"),
    PolicySpec(
        "always-steer", "guard", "add alpha*v on every request", guard_policy="always-steer"
    ),
    PolicySpec(
        "always-ablate", "guard", "project v out on every request", guard_policy="always-ablate"
    ),
    PolicySpec(
        "routing-zs", "guard", "routing, zero-shot threshold from the training languages",
        guard_policy="routing", threshold="zero-shot",
    ),
    PolicySpec(
        "routing-k1", "guard", "routing, threshold recalibrated on 1 example per class",
        guard_policy="routing", threshold="k1",
    ),
    PolicySpec(
        "routing-k4", "guard", "routing, threshold recalibrated on 4 examples per class",
        guard_policy="routing", threshold="k4",
    ),
    PolicySpec(
        "adasteer", "baseline", "AdaSteer (adapted, 32 target-language examples per class)",
        method="adasteer",
    ),
    PolicySpec(
        "cast", "baseline", "CAST (adapted, 32 target-language examples per class)",
        method="cast",
    ),
    PolicySpec(
        "routing-k4+refuse", "refuse",
        "routing k=4 with the refuse action: a harmful verdict answers with the templated "
        "refusal", source="routing-k4",
    ),
    PolicySpec(
        "shadow-k4", "guard",
        "scored with the k=4 threshold, every output untouched (the guard only flags)",
        guard_policy="shadow", threshold="k4",
    ),
    PolicySpec(
        "shadow-k4+refuse", "refuse",
        "the serving default: a harmful verdict (k=4) answers with the templated refusal, every "
        "other request is served untouched (never ablates)", source="shadow-k4",
    ),
)
POLICY_NAMES: tuple[str, ...] = tuple(p.name for p in POLICIES)
RECALIBRATION_KS: dict[str, int] = {"k1": 1, "k4": 4}


def policy(name: str) -> PolicySpec:
    """The spec of ``name``: a row of ``POLICIES``, or ``adasteer@S`` / ``cast@S``, a baseline at
    S times its fitted strength (the strength sweep routing's lambda gets from ``babelgate
    sweep``)."""
    base, at, scale_text = name.partition("@")
    for spec in POLICIES:
        if spec.name != base:
            continue
        if not at:
            return spec
        if spec.kind != "baseline":
            raise ValueError(f"{name!r}: only the baselines (adasteer, cast) take @SCALE")
        scale = parse_scale(name, scale_text)
        return dataclasses.replace(
            spec, name=name, scale=scale,
            description=f"{spec.description}, {scale:g} x its fitted strength",
        )  # fmt: skip
    raise ValueError(
        f"unknown policy {name!r}: choose from {', '.join(POLICY_NAMES)}, or adasteer@SCALE / "
        "cast@SCALE"
    )


def parse_scale(name: str, text: str) -> float:
    """The SCALE of ``METHOD@SCALE``: a finite number > 0."""
    try:
        scale = float(text)
    except ValueError:
        raise ValueError(f"{name!r}: SCALE must be a number, got {text!r}") from None
    try:
        return valid_scale(scale)
    except ValueError as err:
        raise ValueError(f"{name!r}: SCALE: {err}") from None


def valid_scale(scale: float) -> float:
    """A baseline's strength multiplier, checked: a finite number > 0 (the CLI's ``@SCALE`` and
    the worker's per-request ``scale`` both go through here)."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"must be a finite number > 0, got {scale!r}")
    return scale


def select_policies(names: list[str] | None) -> list[PolicySpec]:
    """The chosen policies in table order (a scaled baseline after its method's row, by scale),
    adding the routing row a refuse row reuses."""
    if not names:
        return list(POLICIES)
    wanted = {spec.name: spec for spec in map(policy, names)}
    for spec in list(wanted.values()):
        if spec.source:
            wanted.setdefault(spec.source, policy(spec.source))
    order = {p.name: i for i, p in enumerate(POLICIES)}
    return sorted(wanted.values(), key=lambda s: (order[s.name.partition("@")[0]], s.scale))
