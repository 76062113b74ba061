"""The VMI admission decision: what to tell KubeVirt's API server about a VMI being created.

For a VMI as the API server sends it (after KubeVirt's own mutating webhook has defaulted it) and
the cluster's KubeVirt configuration (the KubeVirt CR's ``spec.configuration``):

- **T**, what the service answers for the VMI by default (the active table for its hypervisor and
  architecture, else the default table), and **B**, what the cluster's KubeVirt computes (a
  built-in upstream table), both as virt-controller's ``CalculateMemoryOverhead`` (ratio, feature
  gates, hypervisors, network-binding plugins);
- a mode, from the setting, the webhook registration (a namespace's label picks it) or the VMI's
  label ``overhead.kubevirt.io/admission`` (in that order of precedence, the label last):

  ``shadow``             annotations only;
  ``headroom``           T > B: raise the pod's memory by δ = T − B where KubeVirt places the
                         overhead, guest RAM unchanged (:func:`~overhead_service.model.headroom.plan_raise`);
  ``reserved-overhead``  make KubeVirt's own figure T through ``memory.reservedOverhead.addedOverhead``
                         (needs the ``ReservedOverheadMemlock`` gate; headroom otherwise);
  ``off``                nothing at all.

Every patch is checked by rendering the pod with the upstream table before and after
(:func:`overhead_service.model.render.render`) and against the memory rules of KubeVirt's VMI
create admitter; a patch that fails is not sent. The answer always allows the VMI: a problem makes
it an unpatched answer with a warning (:class:`Decision`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from overhead_service.errors import InexactNumber, InputError, UnknownTable
from overhead_service.model.engine import parse_ratio
from overhead_service.model.fields import read_object
from overhead_service.model.headroom import (
    MIB,
    Memory,
    Raise,
    UpstreamFigure,
    plan_added_overhead,
    plan_raise,
    read_memory,
)
from overhead_service.model.jsonpatch import apply_edits
from overhead_service.model.quantity import parse_quantity
from overhead_service.model.render import render
from overhead_service.model.service import OverheadService
from overhead_service.model.vmi import extract_features

__all__ = ["ANNOTATIONS", "LABEL", "MODES", "Admission", "Decision"]

MODES: Final = ("shadow", "headroom", "reserved-overhead", "off")
LABEL: Final = "overhead.kubevirt.io/admission"
PREFIX: Final = "overhead.kubevirt.io/"
ANNOTATIONS: Final = {
    name: PREFIX + name for name in ("predicted-bytes", "upstream-bytes", "table", "mode", "delta-bytes")
}
GATE: Final = "ReservedOverheadMemlock"
# Set by KubeVirt's VMI mutator on CREATE (pkg/virt-api/webhooks/mutating-webhook/mutators).
KUBEVIRT_FINALIZER: Final = "kubevirt.io/foregroundDeleteVirtualMachine"
_DEV = "developerConfiguration"


@dataclass(slots=True)
class Decision:
    """What to answer, and what to count and log about it."""

    requested: str  # the mode asked for
    mode: str  # applied: shadow | headroom | reserved-overhead | none | off
    outcome: str  # patched (spec changed) | annotated | skipped (nothing to do) | error
    reason: str | None = None  # why less than asked was done; an error's reason is its metric label
    patch: list[dict[str, Any]] = field(default_factory=list)
    patched: dict[str, Any] | None = None  # the VMI with the patch applied
    warnings: list[str] = field(default_factory=list)
    predicted: int | None = None  # T
    upstream: int | None = None  # B
    table: str | None = None  # T's table
    hypervisor: str | None = None
    delta: int | None = None  # how much the pod's memory changed, when a change was applied
    wanted: int | None = None  # T - B
    edits: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)  # to the spec


def _labels(vmi: dict[str, Any]) -> dict[str, Any]:
    metadata = read_object(vmi.get("metadata"), "vmi.metadata")
    return read_object(metadata.get("labels"), "vmi.metadata.labels")


def _defaulted(vmi: dict[str, Any]) -> bool:
    """Whether KubeVirt's own mutating webhook has been through the VMI (it sets the phase and its
    finalizer on CREATE; the VMI has no status subresource, so the API server passes both on)."""
    status = vmi.get("status")
    if type(status) is dict and status.get("phase"):
        return True
    finalizers = read_object(vmi.get("metadata"), "vmi.metadata").get("finalizers")
    return type(finalizers) is list and KUBEVIRT_FINALIZER in finalizers


class Admission:
    """Decides admissions with an :class:`OverheadService` and a built-in upstream table."""

    def __init__(self, service: OverheadService, upstream_table: str) -> None:
        table = service.tables.get(upstream_table)  # UnknownTable at start-up, not per VMI
        provenance = table.document.get("provenance", {})
        if not table.document.get("builtin") or provenance.get("kind") != "upstream":
            raise UnknownTable(
                "ADMISSION_UPSTREAM_TABLE", f"{upstream_table!r} is not a built-in upstream table"
            )
        self.service = service
        self.upstream_table = upstream_table

    def review(self, vmi: Any, configuration: dict[str, Any] | None, mode: str) -> Decision:
        """The decision for one VMI CREATE; never raises :class:`InputError` (it becomes an error
        decision naming the field)."""
        requested = mode
        try:
            if type(vmi) is not dict:
                raise InputError("vmi", "must be an object")
            label = _labels(vmi).get(LABEL)
            warnings = []
            if label is not None:
                if label in MODES:
                    requested = label
                else:
                    warnings.append(f"label {LABEL}={label!r} is not one of {', '.join(MODES)}: shadow")
                    requested = "shadow"
            if requested == "off":
                return Decision(requested, "off", "skipped", "mode off")
            if not _defaulted(vmi):
                return Decision(requested, "none", "skipped", "not yet defaulted by KubeVirt")
            metadata = read_object(vmi.get("metadata"), "vmi.metadata")
            annotations = read_object(metadata.get("annotations"), "vmi.metadata.annotations")
            if ANNOTATIONS["mode"] in annotations:
                return Decision(requested, "none", "skipped", "already admitted")
            if configuration is None:
                return _error(
                    requested, "configuration-unavailable", "the KubeVirt configuration is not known yet"
                )
            decision = self._decide(vmi, configuration, requested)
            decision.warnings[:0] = warnings
            return decision
        except InexactNumber:
            raise  # the caller decodes the body again, keeping every number exact
        except InputError as error:
            reason = (
                "invalid-configuration" if error.path.startswith("kubevirtConfiguration") else "invalid-vmi"
            )
            return _error(requested, reason, str(error))

    def _decide(self, vmi: dict[str, Any], configuration: dict[str, Any], mode: str) -> Decision:
        body = {"vmi": vmi, "kubevirtConfiguration": configuration}
        ours = self.service.compute(body)
        upstream = self.service.compute({**body, "table": self.upstream_table})
        t, b = ours["overhead"]["bytes"], upstream["overhead"]["bytes"]
        decision = Decision(
            mode,
            "shadow",
            "annotated",
            predicted=t,
            upstream=b,
            table=ours["table"]["id"],
            hypervisor=ours["hypervisor"]["name"],
            wanted=t - b,
        )
        if mode != "shadow":
            memory = read_memory(vmi)
            check = _Check(self.service, body, self.upstream_table, memory)
            if mode == "reserved-overhead" and GATE not in _gates(configuration):
                decision.warnings.append(f"reserved-overhead needs the {GATE} feature gate: headroom instead")
                mode = "headroom"
            if mode == "reserved-overhead":
                self._reserved(decision, vmi, upstream, check)
            else:
                self._headroom(decision, vmi, upstream, check, configuration)
        edits = _annotation_edits(vmi, decision)
        decision.patched, decision.patch = apply_edits(vmi, edits + decision.edits)
        return decision

    def _figure(
        self, vmi: dict[str, Any], upstream: dict[str, Any], configuration: dict[str, Any]
    ) -> UpstreamFigure:
        table = self.service.tables.get(self.upstream_table)
        model = table.model_for(upstream["hypervisor"]["name"], upstream["cpuArch"])
        assert model is not None  # the service answered with it
        ratio = parse_ratio(configuration.get("additionalGuestMemoryOverheadRatio"))
        return UpstreamFigure(model, extract_features(vmi), upstream["cpuArch"], ratio)

    def _headroom(
        self,
        decision: Decision,
        vmi: dict[str, Any],
        upstream: dict[str, Any],
        check: _Check,
        configuration: dict[str, Any],
    ) -> None:
        delta = decision.wanted or 0
        if delta <= 0:
            decision.mode, decision.reason = (
                "none",
                "T <= B: nothing to add (the saving is in the annotations)",
            )
            return
        overcommit = _int(read_object(configuration.get(_DEV), _DEV), "memoryOvercommit", 100)
        plan = plan_raise(check.memory, self._figure(vmi, upstream, configuration), delta, overcommit)
        if isinstance(plan, str):
            decision.mode, decision.reason = "none", plan
            return
        excess = plan.growth - delta
        if excess >= MIB and excess >= delta:
            # Whole hugepages, or page tables KubeVirt counts once the request is explicit: the
            # smallest raise it accepts would more than double what is asked.
            decision.mode = "none"
            decision.reason = (
                f"the smallest raise KubeVirt accepts adds {plan.growth} bytes, over twice T - B"
            )
            return
        problem = check.headroom(vmi, plan, delta)
        if isinstance(problem, str):
            _fail(decision, problem)
            return
        decision.mode, decision.outcome, decision.delta = "headroom", "patched", problem
        decision.edits = plan.edits
        if problem - delta >= MIB:
            decision.warnings.append(
                f"headroom in whole {check.memory.page_size} pages: the pod grows by {problem} bytes, "
                f"{problem - delta} more than T - B"
            )

    def _reserved(
        self, decision: Decision, vmi: dict[str, Any], upstream: dict[str, Any], check: _Check
    ) -> None:
        if check.memory.added_overhead:
            decision.mode, decision.reason = "none", "the VMI sets its own reservedOverhead.addedOverhead"
            return
        configuration = check.body["kubevirtConfiguration"]
        figure = self._figure(vmi, upstream, configuration)
        target = check.reserved_target(decision.predicted or 0, decision.upstream or 0)
        if target <= (decision.upstream or 0) < target + MIB:
            decision.mode, decision.reason = "none", "KubeVirt's own figure is already T"
            return
        edits, _ = plan_added_overhead(figure, decision.upstream or 0, target)
        problem = check.reserved(vmi, edits, target)
        if isinstance(problem, str):
            _fail(decision, problem)
            return
        decision.mode, decision.outcome, decision.delta = "reserved-overhead", "patched", problem
        decision.edits = edits


def _int(parent: dict[str, Any], key: str, default: int) -> int:
    value = parent.get(key)
    return value if type(value) is int and value > 0 else default


def _gates(configuration: dict[str, Any]) -> list[Any]:
    gates = read_object(configuration.get(_DEV), _DEV).get("featureGates")
    return gates if type(gates) is list else []


def _error(requested: str, reason: str, detail: str) -> Decision:
    return Decision(requested, "none", "error", reason, warnings=[f"VMI left unchanged: {detail}"[:200]])


def _fail(decision: Decision, problem: str) -> None:
    """A plan the check refused: no patch at all, and say why."""
    decision.mode, decision.outcome, decision.reason = "none", "error", "check-failed"
    decision.warnings.append(f"VMI left unchanged, the patch failed its check: {problem}"[:200])


def _annotation_edits(vmi: dict[str, Any], decision: Decision) -> list[tuple[tuple[str, ...], Any]]:
    if decision.outcome == "error":
        return []
    values = {
        ANNOTATIONS["predicted-bytes"]: str(decision.predicted),
        ANNOTATIONS["upstream-bytes"]: str(decision.upstream),
        ANNOTATIONS["table"]: str(decision.table),
        ANNOTATIONS["mode"]: decision.mode,
    }
    if decision.delta is not None:
        values[ANNOTATIONS["delta-bytes"]] = str(decision.delta)
    metadata = read_object(vmi.get("metadata"), "vmi.metadata")
    if metadata.get("annotations") is None:
        return [(("metadata", "annotations"), values)]
    return [(("metadata", "annotations", key), value) for key, value in values.items()]


# --- the check -------------------------------------------------------------------------------------

_OVERHEAD_ANNOTATION: Final = "kubevirt.io/memory-overhead-bytes"


def _bytes(resources: dict[str, str], name: str) -> int | None:
    text = resources.get(name)
    return None if text is None else parse_quantity(text).value()


def _pod_memory(resources: dict[str, str]) -> int:
    """Memory and hugepages together: what the pod holds for the guest and the overhead."""
    return sum(
        parse_quantity(v).value() for k, v in resources.items() if k == "memory" or k.startswith("hugepages-")
    )


def _refusal(memory: Memory) -> str | None:
    """The memory rules of KubeVirt's VMI create admitter (``vmi-create-admitter.go``) that a raise
    could break: request within the limit (equal with dedicated CPUs), guest within the limit, a
    hugepage-backed request a whole number of pages."""
    request = memory.request.value() if memory.request else 0
    limit = memory.limit.value() if memory.limit else 0
    if limit > 0 and request > limit:
        return "requests.memory above limits.memory"
    if memory.dedicated and request > 0 and limit > 0 and request != limit:
        return "dedicated CPUs need requests.memory equal to limits.memory"
    if memory.guest is not None and limit > 0 and memory.guest.value() > limit:
        return "memory.guest above limits.memory"
    if memory.page is not None:
        size = request or (memory.guest.value() if memory.guest else 0) or limit
        if size and (size < memory.page or size % memory.page):
            return f"the memory is not a whole number of {memory.page_size} pages"
    return None


class _Check:
    """Renders the pod with the upstream table before and after a patch, and compares."""

    def __init__(self, service: OverheadService, body: dict[str, Any], table: str, memory: Memory) -> None:
        self.service = service
        self.body = {**body, "table": table}
        self.memory = memory
        self._before: dict[str, Any] | None = None

    def _render(self, vmi: dict[str, Any]) -> dict[str, Any]:
        return render({**self.body, "vmi": vmi}, self.service)

    @property
    def before(self) -> dict[str, Any]:
        if self._before is None:
            self._before = self._render(self.body["vmi"])
        return self._before

    def _after(self, vmi: dict[str, Any], edits: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any] | str:
        """The patched VMI's rendering, or what is wrong with the patch beyond its memory figures."""
        patched, _ = apply_edits(vmi, edits)
        memory = read_memory(patched)
        refusal = _refusal(memory)
        if refusal is not None and _refusal(self.memory) is None:
            return f"KubeVirt would refuse the patched VMI: {refusal}"
        guest, patched_guest = self.memory.effective_guest(), memory.effective_guest()
        if guest is None or patched_guest is None or guest.cmp(patched_guest) != 0:
            return "the guest memory would change"
        flags = {**extract_features(patched).flags, "reservedOverhead": None}
        if flags != {**extract_features(vmi).flags, "reservedOverhead": None}:
            return "the patch would change what else KubeVirt's overhead depends on"
        after = self._render(patched)
        for kind in ("requests", "limits"):
            old, new = self.before["resources"][kind], after["resources"][kind]
            if {k: v for k, v in old.items() if k != "memory"} != {
                k: v for k, v in new.items() if k != "memory"
            }:
                return f"the pod's {kind} other than memory would change"
            if ("memory" in old) != ("memory" in new):
                return f"the pod's memory {kind[:-1]} would appear or vanish"
        return after

    def headroom(self, vmi: dict[str, Any], plan: Raise, delta: int) -> int | str:
        """The growth of the pod's memory, or why the raise is refused: every figure that carries
        the overhead grows by at least ``delta`` and less than ``delta`` + 1 MiB (or than the
        smallest raise KubeVirt accepts, plus one hugepage, when that is more)."""
        after = self._after(vmi, plan.edits)
        if isinstance(after, str):
            return after
        old, new = self.before["resources"], after["resources"]
        growths = {}
        if not self.memory.overcommit_guest_overhead or self.memory.page is not None:
            growths["request"] = _pod_memory(new["requests"]) - _pod_memory(old["requests"])
        if "memory" in old["limits"]:
            growths["limit"] = (_bytes(new["limits"], "memory") or 0) - (_bytes(old["limits"], "memory") or 0)
        bound = max(delta, plan.least) + (plan.step_growth if plan.step > 1 else 0) + MIB
        for name, growth in growths.items():
            if not delta <= growth < bound:
                return f"the pod's memory {name} would grow by {growth} bytes, not in [{delta}, {bound})"
        if not growths:
            return "no pod memory figure carries the overhead"
        return growths.get("request", growths.get("limit", 0))

    def reserved_target(self, t: int, b: int) -> int:
        """T, or more where T would take the pod's memory below the guest's (or below what it
        already was, when that is less)."""
        guest = self.memory.effective_guest()
        floor = guest.value() if guest is not None else 0
        resources = self.before["resources"]
        target = t
        if not self.memory.overcommit_guest_overhead or self.memory.page is not None:
            request = _pod_memory(resources["requests"])
            target = max(target, b + min(request, floor) - request)
        limit = _bytes(resources["limits"], "memory")
        if limit is not None:
            target = max(target, b + min(limit, floor) - limit)
        return target

    def reserved(
        self, vmi: dict[str, Any], edits: list[tuple[tuple[str, ...], Any]], target: int
    ) -> int | str:
        """KubeVirt's new figure minus its old one, or why the ``addedOverhead`` is refused."""
        after = self._after(vmi, edits)
        if isinstance(after, str):
            return after
        figure = int(after["annotations"][_OVERHEAD_ANNOTATION])
        if not target <= figure < target + MIB:
            return f"KubeVirt's overhead would be {figure} bytes, not in [{target}, {target + MIB})"
        return figure - int(self.before["annotations"][_OVERHEAD_ANNOTATION])
