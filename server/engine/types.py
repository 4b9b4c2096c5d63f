"""Plain data that crosses process boundaries: guard parameters in, verdicts out.

Runs in any process. ``GuardParams`` is what a caller (the API server, an eval script) asks for;
it travels to the vLLM worker as ``SamplingParams.extra_args["babelgate"]`` (msgpack-able values
only). ``GateParams`` is the gate folded to what the guard in the worker evaluates: one dot product
per layer read (``sum_j h_j @ u_j + c``) and one direction. ``Verdict`` is what the worker
reports back per request.
Everything here is a dataclass of builtins and numpy arrays so the worker never imports the gate
library's estimator and the swap between a stand-in gate and a real artifact is one line.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    from babelgate.gate.estimator import HarmfulnessGate

# The per-request policies: the one vocabulary of the settings, the API, the worker and the eval.
Policy = Literal["routing", "none", "shadow", "always-steer", "always-ablate"]
POLICIES: tuple[Policy, ...] = get_args(Policy)
# What the guard does to a request's forward pass (``Verdict.intervention``).
InterventionKind = Literal["steer", "ablate", "none"]
# Every policy but routing fixes the intervention before the gate scores the request.
FIXED_INTERVENTIONS: dict[str, InterventionKind] = {
    "none": "none",
    "shadow": "none",
    "always-steer": "steer",
    "always-ablate": "ablate",
}
# Policies whose forward pass differs from plain vLLM (they write KV nobody else may reuse).
INTERVENING_POLICIES: frozenset[str] = frozenset(
    p for p in POLICIES if FIXED_INTERVENTIONS.get(p) != "none"
)
EXTRA_ARGS_KEY = "babelgate"

# Set to "1" in the server's environment (the engine inherits it) to allow fault injection
# (``PUT /admin/faults/gate-failure``, ``GuardRuntime.inject_gate_failure``): a test-only
# switch, absent and refused otherwise.
TEST_FAULTS_ENV = "BABELGATE_TEST_FAULTS"


def faults_enabled() -> bool:
    """Whether this process may inject faults (``TEST_FAULTS_ENV`` is "1")."""
    return os.environ.get(TEST_FAULTS_ENV) == "1"


# What the gate said about a request: harmful at or above its threshold, harmless below its
# harmless threshold, unsure in the band between (empty unless the caller sets one).
Decision = Literal["harmful", "harmless", "unsure"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)


def policy_intervention(policy: str, decision: str | None) -> InterventionKind | None:
    """What ``policy`` does to a request the gate decided ``decision`` on (None: not decided
    yet).

    Routing steers harmful and ablates harmless requests, leaves unsure ones alone (the abstain
    band changes nothing), and is pending (None) until the decision; the other policies do the
    same whatever the gate says.
    """
    fixed = FIXED_INTERVENTIONS.get(policy)
    if fixed is not None:
        return fixed
    if decision is None:
        return None
    return {"harmful": "steer", "harmless": "ablate", "unsure": "none"}[decision]


class GuardrailStartupError(RuntimeError):
    """The guarded engine cannot serve safely; the message says what to do."""


@dataclass(frozen=True)
class GateParams:
    """The gate as the worker's guard sees it: score ``sum_j h_j @ u_j + c`` over
    ``read_layers``, decided (and the intervention made) at ``layer``, the last of them;
    direction ``v``.

    ``u`` is ``(k, d)`` float32, one row per layer read (k = 1 for the paper's single-layer
    gate); ``v`` is unit-norm float32; ``alpha`` is the steering strength (METHOD §5);
    ``fingerprint`` identifies the gate (it salts the prefix cache of requests whose KV this
    gate changes).
    """

    layer: int
    u: np.ndarray
    c: float
    v: np.ndarray
    alpha: float
    fingerprint: str
    read_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        v = np.asarray(self.v, dtype=np.float32).reshape(-1)
        u = np.asarray(self.u, dtype=np.float32).reshape(-1, v.shape[0]) if v.size else self.u
        reads = tuple(int(x) for x in self.read_layers) or (int(self.layer),)
        if np.asarray(self.u).size != len(reads) * v.size:
            raise ValueError(
                f"u has shape {np.asarray(self.u).shape} but v has {v.shape} and the gate reads "
                f"{len(reads)} layer(s): u must be (k, d)"
            )
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            raise ValueError("gate vectors contain NaN or infinity: recalibrate the gate")
        norm = float(np.linalg.norm(v))
        if abs(norm - 1.0) > 1e-3:
            raise ValueError(f"direction v must be unit-norm, has norm {norm:.4f}")
        if not (math.isfinite(self.c) and math.isfinite(self.alpha)):
            raise ValueError(f"c={self.c} and alpha={self.alpha} must be finite")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if list(reads) != sorted(set(reads)) or reads[-1] != self.layer or reads[0] < 0:
            raise ValueError(
                f"read_layers {list(reads)} must be ascending, distinct, >= 0 and end at the "
                f"decision layer {self.layer}"
            )
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "v", v)
        object.__setattr__(self, "read_layers", reads)
        object.__setattr__(self, "c", float(self.c))
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def hidden_size(self) -> int:
        return int(self.v.shape[0])

    @classmethod
    def from_gate(cls, gate: HarmfulnessGate) -> GateParams:
        """Fold a fitted ``HarmfulnessGate`` into the guard's parameters."""
        u, c = gate.linear_form()
        if gate.direction is None or gate.alpha is None:
            raise ValueError("the gate is not fitted: load a calibrated artifact")
        v = np.asarray(gate.direction, dtype=np.float32)
        u = np.asarray(u, np.float32).reshape(len(gate.layers), -1)
        digest = hashlib.sha256()
        header = np.float32([c, gate.alpha, *gate.layers])
        for part in (u, v, header):
            digest.update(part.tobytes())
        return cls(
            gate.layer, u, float(c), v, float(gate.alpha), digest.hexdigest()[:16],
            tuple(gate.layers),
        )

    def to_wire(self) -> dict[str, Any]:
        """msgpack-able form for ``collective_rpc`` (float32 values round-trip exactly)."""
        return {
            "layer": self.layer,
            "read_layers": list(self.read_layers),
            "u": self.u.tolist(),
            "c": self.c,
            "v": self.v.tolist(),
            "alpha": self.alpha,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GateParams:
        return cls(
            int(data["layer"]),
            np.asarray(data["u"], np.float32),
            float(data["c"]),
            np.asarray(data["v"], np.float32),
            float(data["alpha"]),
            str(data["fingerprint"]),
            tuple(int(x) for x in data.get("read_layers", [data["layer"]])),
        )


def _require_finite(name: str, value: float) -> None:
    """A threshold must be a real, finite number (a bool is not one)."""
    if isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class GuardParams:
    """What a caller asks of the guard for one request.

    ``threshold`` is resolved by the caller (admin store, per-language record, zero-shot
    fallback) so a threshold change applies to the next request without touching workers.
    ``id`` keys the frozen decision and the verdict; it defaults to a fresh uuid.
    ``harmless_threshold`` opens an abstain band below ``threshold``: a score under it is
    harmless, one in ``[harmless_threshold, threshold)`` unsure (routing then does nothing);
    None means equal to ``threshold``: no band, every score is harmful or harmless; -inf: no
    score is harmless (routing never ablates).
    """

    language: str
    policy: Policy = "routing"
    threshold: float = 0.0
    threshold_source: str = "default"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    harmless_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        _require_finite("threshold", self.threshold)
        band = self.harmless_threshold
        if band is None:
            return
        if isinstance(band, bool) or math.isnan(float(band)) or float(band) == math.inf:
            raise ValueError(
                f"harmless_threshold must be a number or -inf (never harmless), got {band!r}"
            )
        if band > self.threshold:
            raise ValueError(
                f"harmless_threshold {self.harmless_threshold} is above threshold "
                f"{self.threshold}: the abstain band is [harmless_threshold, threshold)"
            )

    def to_extra_args(self) -> dict[str, Any]:
        """The ``SamplingParams.extra_args["babelgate"]`` payload."""
        return {
            "id": self.id,
            "language": self.language,
            "policy": self.policy,
            "threshold": float(self.threshold),
            "threshold_source": self.threshold_source,
            "harmless_threshold": (
                None if self.harmless_threshold is None else float(self.harmless_threshold)
            ),
        }

    def cache_salt(self, gate_fingerprint: str) -> str | None:
        """Prefix-cache salt: which requests may share KV blocks with this one.

        ``none``/``shadow`` compute plain KV: unsalted, they share with each other and plain
        vLLM. ``always-ablate`` ablates every position of every request identically, so its KV
        depends only on the tokens and the gate: one salt per gate. ``routing`` and
        ``always-steer`` change KV relative to where *this* request's prompt ends, and routing's
        decision is only known inside its own prefill (after the cache lookup), so their KV is
        private to the request: a salt unique to it.
        """
        if self.policy not in INTERVENING_POLICIES:
            return None
        if self.policy == "always-ablate":
            return f"babelgate:ablate:{gate_fingerprint}"
        return f"babelgate:{self.policy}:{gate_fingerprint}:{self.id}"


@dataclass(frozen=True)
class Verdict:
    """What the guard did for one request, reported by the worker after its prefill.

    ``score`` is the gate logit at layer L at the last prompt token (None only if the request
    never reached its last prompt token, e.g. aborted in an earlier chunk); ``decision`` is
    "harmful" (``score >= threshold``), "harmless" (``score < harmless_threshold``), "unsure"
    (in between: only with an abstain band) or None (not decided); ``harmful`` stays
    ``score >= threshold`` (None while undecided), so an unsure request is not harmful: callers
    that read only ``harmful`` see it as they see a harmless one, and the intervention says
    routing left it alone. ``harmless_threshold`` is None without a band. Built without a
    ``decision``, it is derived from ``harmful``. ``intervention`` is "steer", "ablate" or
    "none"; ``intervened_positions`` counts the rows the intervention changed so far (a
    preempted request's recomputed rows count again).
    """

    id: str
    language: str
    policy: str
    threshold: float
    threshold_source: str
    score: float | None
    harmful: bool | None
    intervention: str
    intervened_positions: int
    decision: Decision | None = None
    harmless_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.decision is None and self.harmful is not None:
            object.__setattr__(self, "decision", "harmful" if self.harmful else "harmless")
        if (self.decision is None) != (self.harmful is None) or (
            self.decision is not None and (self.decision == "harmful") != self.harmful
        ):
            raise ValueError(f"decision {self.decision!r} contradicts harmful={self.harmful}")

    @property
    def intervened(self) -> bool:
        return self.intervened_positions > 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["intervened"] = self.intervened
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
