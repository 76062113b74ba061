"""The domain entry point: one overhead request in, one JSON-ready answer out.

Nothing here knows about Flask, HTTP or SQL; the web layer and the CLI are thin shells around
:class:`OverheadService`.

Request (a decoded JSON object)::

    {"vmi": {...VirtualMachineInstance...},          # required
     "cpuArch": "amd64",                              # optional
     "hypervisor": "auto" | "kvm" | "mshv" | "hyperv-direct",
     "kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": "1.5",
                               "developerConfiguration": {"featureGates": [...], "useEmulation": false},
                               "hypervisors": [{"name": "hyperv-direct"}],
                               "network": {"binding": {...}}},
     "node": {"mshvAvailable": true, "kvmAvailable": true, "emulationAllowed": false,
              ...what overhead-service node-check --json prints besides (informational)},
     "table": "kubevirt-v1.9.0"}

Answer::

    {"overhead": {"quantity": "304087040", "bytes": 304087040},
     "nodeOverhead": {"quantity": "0", "bytes": 0},
     "hypervisor": {"name": "kvm", "reason": "feature-gate-disabled", "domainType": "kvm",
                    "deviceResource": "devices.kubevirt.io/kvm"},
     "table": {"id": "kubevirt-v1.9.0", "provisional": false},
     "cpuArch": "amd64",
     "components": [{"name": "pagetables", "bytes": 2097152}, ...],
     "nodeComponents": []}

Bad input raises :class:`~overhead_service.errors.InputError` with the JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

import orjson

from overhead_service.errors import InexactNumber, InputError, NotInTable, problem
from overhead_service.model.engine import RATIO_PATH, compute_overhead, parse_ratio
from overhead_service.model.fields import EMPTY, read_bool, read_object, read_text
from overhead_service.model.hypervisor import HypervisorDecision, NodeFacts, read_node, select
from overhead_service.model.quantity import ZERO, Quantity
from overhead_service.model.tables import Model, TableRegistry
from overhead_service.model.vmi import extract_features, memo_key, read_quantity
from overhead_service.model.warnings import kubevirt_release, overhead_warnings

__all__ = ["OverheadService"]

_FIELDS: Final = frozenset({"vmi", "cpuArch", "hypervisor", "kubevirtConfiguration", "node", "table"})
_HYPERVISORS: Final = {"auto": "auto", "kvm": "kvm", "mshv": "mshv", "hyperv-direct": "mshv"}
_CONFIGURED: Final = frozenset({"kvm", "hyperv-direct"})
_MAX_ARCH: Final = 64
_MAX_RATIO: Final = 100
_KV: Final = "kubevirtConfiguration"
_DEVELOPER: Final = f"{_KV}.developerConfiguration"


class _Cluster:
    """The parts of KubeVirt's ``spec.configuration`` that the overhead depends on."""

    __slots__ = ("bindings", "configured", "gates", "ratio", "use_emulation")

    def __init__(self, config: dict[str, Any]) -> None:
        self.ratio = parse_ratio(
            read_text(config.get("additionalGuestMemoryOverheadRatio"), RATIO_PATH, _MAX_RATIO)
        )
        developer = read_object(config.get("developerConfiguration"), _DEVELOPER)
        gates = developer.get("featureGates")
        if gates is not None and (type(gates) is not list or any(type(gate) is not str for gate in gates)):
            raise InputError(f"{_DEVELOPER}.featureGates", "must be an array of strings")
        self.gates = frozenset(gates or ())
        self.use_emulation = bool(read_bool(developer, "useEmulation", _DEVELOPER))
        self.configured = self._configured(config.get("hypervisors"))
        self.bindings = self._bindings(config)

    @staticmethod
    def _configured(hypervisors: Any) -> str | None:
        """The hypervisor KubeVirt is configured with: the first entry's name, None without entries."""
        if hypervisors is not None and type(hypervisors) is not list:
            raise InputError(f"{_KV}.hypervisors", "must be an array")
        names = []
        for index, entry in enumerate(hypervisors or ()):
            entry_path = f"{_KV}.hypervisors[{index}]"
            if type(entry) is not dict:
                raise InputError(entry_path, "must be an object")
            name = entry.get("name")
            if name is not None and (type(name) is not str or name not in _CONFIGURED and name != ""):
                raise InputError(f"{entry_path}.name", "must be one of kvm, hyperv-direct")
            # virt-config's JSON merge decodes entry 0 into the default entry ({name: kvm}) in place;
            # an empty name is omitted on the way, so the default name stays.
            names.append(name or "kvm")
        return names[0] if names else None

    @staticmethod
    def _bindings(config: dict[str, Any]) -> dict[str, Quantity | None]:
        """Each registered network-binding plugin's memory request (None when it declares none)."""
        network = read_object(config.get("network"), f"{_KV}.network")
        plugins = read_object(network.get("binding"), f"{_KV}.network.binding")
        bindings: dict[str, Quantity | None] = {}
        for name, plugin in plugins.items():
            plugin_path = f"{_KV}.network.binding.{name}"
            overhead_path = f"{plugin_path}.computeResourceOverhead"
            overhead = read_object(
                read_object(plugin, plugin_path).get("computeResourceOverhead"), overhead_path
            )
            requests = read_object(overhead.get("requests"), f"{overhead_path}.requests")
            if not requests:  # an empty ResourceList is omitted by virt-config's JSON merge: nil
                bindings[name] = None
            elif "memory" in requests and requests["memory"] is None:
                bindings[name] = ZERO  # a null Quantity is marshalled as "0" by the merge
            else:
                # A missing key reads as Go's zero Quantity{} from the map.
                bindings[name] = read_quantity(requests.get("memory"), f"{overhead_path}.requests.memory")
        return bindings


_MEMO_SIZE: Final = 4096
_NO_CLUSTER: Final = _Cluster(EMPTY)
_NO_NODE: Final = NodeFacts()


@lru_cache(maxsize=256)
def _decide(
    requested: str, gates: frozenset[str], configured: str | None, node: NodeFacts
) -> tuple[HypervisorDecision, dict[str, str | None]]:
    """The hypervisor decision and its JSON form; a pure function of hashable facts, so memoised."""
    decision = select(requested, gates, configured, node)
    return decision, decision.to_json()


class OverheadService:
    """Computes overhead answers from a :class:`TableRegistry`.

    A request that names no table gets the *active* table for its hypervisor and architecture
    (:meth:`set_active`; an ``arch`` of ``"*"`` covers every architecture), else ``default_table``.
    """

    MAX_BATCH: Final = 10_000

    def __init__(
        self,
        tables: TableRegistry,
        *,
        default_arch: str = "amd64",
        default_table: str = "kubevirt-v1.9.0",
        memo: bool = True,
    ) -> None:
        tables.get(default_table)  # fail at start-up, not on the first request
        self.tables = tables
        self.default_arch = default_arch
        self.default_table = default_table
        self._active: dict[tuple[str, str], str] = {}
        self._generation = 0  # part of every memo key: answers never outlive an activation
        self._models: dict[tuple[str, str, str], tuple[Model, dict[str, Any], str]] = {}
        # Answers by everything they depend on: virt-controller asks about the same few VMI shapes
        # (templates, instance types) again and again.  Bounded; emptied when full.
        self._memo: dict[bytes, dict[str, Any]] = {}
        self._memo_enabled = memo

    def compute(self, body: Any) -> dict[str, Any]:
        """Answer one overhead request (see the module docstring); raises :class:`InputError`."""
        if type(body) is not dict:
            raise InputError("", "the request must be a JSON object")
        for key in body:
            if key not in _FIELDS:
                raise InputError(key, f"unknown field; allowed: {', '.join(sorted(_FIELDS))}")
        vmi = body.get("vmi")
        if vmi is None:
            raise InputError("vmi", "is required: a VirtualMachineInstance as Kubernetes JSON")
        memo = self._memo_key(body, vmi) if self._memo_enabled else None
        if memo is not None:
            found = self._memo.get(memo)
            if found is not None:
                return dict(found)
        answer = self._compute(body, vmi)
        if memo is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo] = answer
        return dict(answer)

    def _memo_key(self, body: dict[str, Any], vmi: Any) -> bytes | None:
        key = memo_key(body, vmi)
        if key is None:
            return None
        try:
            return orjson.dumps((self._generation, key))
        except TypeError:  # exact-decoded numbers, >64-bit integers, lone surrogates: no memo
            return None

    def set_active(self, active: Mapping[tuple[str, str], str]) -> None:
        """Make ``active`` ((hypervisor, arch) -> table id) the tables requests get by default."""
        for table_id in active.values():
            self.tables.get(table_id)  # an unknown id is an error here, not on a request
        self._active = dict(active)
        self._generation += 1
        self._memo.clear()

    @property
    def active(self) -> dict[tuple[str, str], str]:
        return dict(self._active)

    def active_entries(self) -> list[dict[str, str]]:
        """The active choice as the API shows it: ``[{"hypervisor", "arch", "table"}, ...]``, sorted."""
        return [
            {"hypervisor": hv, "arch": arch, "table": table}
            for (hv, arch), table in sorted(self._active.items())
        ]

    def listing(self) -> dict[str, Any]:
        """What ``GET /v1/tables`` answers (and ``overhead-service tables --json`` prints)."""
        return {
            "default": self.default_table,
            "active": self.active_entries(),
            "tables": self.tables.summaries(),
        }

    def table_for(self, hypervisor: str, arch: str) -> str:
        """The table a request for ``hypervisor`` on ``arch`` gets when it names none."""
        active = self._active
        return active.get((hypervisor, arch)) or active.get((hypervisor, "*")) or self.default_table

    def _compute(self, body: dict[str, Any], vmi: Any) -> dict[str, Any]:
        features = extract_features(vmi)

        config_body = body.get(_KV)
        cluster = _NO_CLUSTER if config_body is None else _Cluster(read_object(config_body, _KV))
        node_body = body.get("node")
        if node_body is None and not cluster.use_emulation:
            node = _NO_NODE
        else:
            node = read_node(read_object(node_body, "node"), cluster.use_emulation)
        requested = read_text(body.get("hypervisor"), "hypervisor", 32)
        if requested is None:
            requested = "auto"
        if requested not in _HYPERVISORS:
            raise InputError("hypervisor", "must be one of auto, kvm, mshv, hyperv-direct")
        decision, decision_json = _decide(_HYPERVISORS[requested], cluster.gates, cluster.configured, node)

        cpu_arch = read_text(body.get("cpuArch"), "cpuArch", _MAX_ARCH)
        if config_body is not None:
            # virt-controller's CalculateMemoryOverhead: the VMI's architecture beats the cluster's.
            arch = features.architecture or cpu_arch or self.default_arch
        else:
            arch = cpu_arch if cpu_arch is not None else features.architecture or self.default_arch

        table_id = read_text(body.get("table"), "table", 200)
        if table_id is None:
            table_id = self.table_for(decision.name, arch)
        model, table_json, release = self._model(table_id, decision.name, arch)
        result = compute_overhead(model, features, arch, cluster.ratio, cluster.bindings)
        return {
            "overhead": result.overhead.to_json(),
            "nodeOverhead": result.node_overhead.to_json(),
            "hypervisor": decision_json,
            "table": table_json,
            "cpuArch": arch,
            "components": result.components,
            "nodeComponents": result.node_components,
            "warnings": overhead_warnings(
                features, decision.name, table_json, release, result.overhead, cluster.ratio
            ),
        }

    def release_of(self, table_id: str) -> str:
        """The KubeVirt version (``v1.9.0`` or ``main``) that goes with a table."""
        return kubevirt_release(self.tables.get(table_id), self.tables)

    def _model(self, table_id: str, hypervisor: str, arch: str) -> tuple[Model, dict[str, Any], str]:
        """The model to sum, the answer's ``table`` entry and the table's KubeVirt version,
        remembered per combination."""
        key = (table_id, hypervisor, arch)
        found = self._models.get(key)
        if found is None:
            table = self.tables.get(table_id)
            model = table.model_for(hypervisor, arch)
            if model is None:
                raise NotInTable("table", f"table {table.id!r} has no model for {hypervisor} on {arch!r}")
            found = (model, {"id": table.id, "provisional": model.provisional}, self.release_of(table.id))
            if len(self._models) < 1024:  # arch strings come from callers: keep the memo bounded
                self._models[key] = found
        return found

    def compute_batch(self, items: Any) -> list[dict[str, Any]]:
        """Answer each item in order; a bad item gets a problem document, the rest still answer."""
        if type(items) is not list:
            raise InputError("items", "must be an array of overhead requests")
        if len(items) > self.MAX_BATCH:
            raise InputError("items", f"at most {self.MAX_BATCH} items per batch, got {len(items)}")
        answers: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                answers.append(self.compute(item))
            except InexactNumber:
                raise  # the caller decodes the whole batch again, exactly
            except InputError as err:
                answers.append(problem(err.at(f"items[{index}]"), status=422))
        return answers
