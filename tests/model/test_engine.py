"""Tests for overhead_service.model.engine (and the service around it): upstream's order of operations.

Expected numbers are worked out by hand from ``GetMemoryOverhead`` and ``MultiplyMemory``
(``pkg/hypervisor/kvm/hypervisorbackend.go``), ``MemoryCalculator.Calculate``
(``pkg/network/resources/memory.go``) and ``CalculateMemoryOverhead``, on the ``kubevirt-main``
table (QEMU 50Mi):

* nothing set: 240Mi + 8Mi (1 vCPU) + 8Mi (IOThread) + 32Mi (video) = 288Mi = 301,989,888 (BinarySI);
* ``requests.memory: 1Gi``: + 2,097,152 page tables = 304,087,040 (DecimalSI);
* ratio r: k = ceil(overhead / 1000); add ``int64(float64(k) * (r - 1)) * 1000``;
* network-binding memory is added after the ratio.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from overhead_service.errors import InputError, InvalidQuantity, InvalidRatio, UnknownTable
from overhead_service.model.engine import RATIO_PATH, parse_ratio
from overhead_service.model.service import OverheadService
from overhead_service.model.tables import TableRegistry

Mi = 1 << 20
Gi = 1 << 30
BASE = 301989888  # 288Mi
BASE_1GI = 304087040
UPSTREAM_PARTS = [
    ("virtLauncherMonitor", 25 * Mi),
    ("virtLauncher", 100 * Mi),
    ("virtlogd", 25 * Mi),
    ("virtqemud", 40 * Mi),
    ("qemu", 50 * Mi),
]


@pytest.fixture(scope="module")
def service() -> OverheadService:
    return OverheadService(TableRegistry.builtin())


def compute(service: OverheadService, vmi: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    return service.compute({"vmi": vmi if vmi is not None else {}, "table": "kubevirt-main", **body})


def mem_vmi(memory: str | None = None, **domain: Any) -> dict[str, Any]:
    if memory is not None:
        domain.setdefault("resources", {}).setdefault("requests", {})["memory"] = memory
    return {"spec": {"domain": domain}}


def ratio(text: Any) -> dict[str, Any]:
    return {"kubevirtConfiguration": {"additionalGuestMemoryOverheadRatio": text}}


# --------------------------------------------------------------------------------------------------
# parse_ratio: Go's strconv.ParseFloat, and what the service refuses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (None, None),
        ("", None),
        ("1.5", 1.5),
        ("1", 1.0),
        ("1.0", 1.0),
        ("1.", 1.0),
        (".5", 0.5),
        ("+1.5", 1.5),
        ("-1", -1.0),
        ("0", 0.0),
        ("1e0", 1.0),
        ("15e-1", 1.5),
        ("2.335", 2.335),
        ("1_5", 15.0),  # underscores between digits
        ("1e1_0", 1e10),
        ("0x1.8p0", 1.5),  # hex floats
        ("0x1p-2", 0.25),
        ("0X1P1", 2.0),
        ("1e-400", 0.0),  # underflow is not an error in Go
    ],
)
def test_parse_ratio_accepts(text: str | None, value: float | None) -> None:
    assert parse_ratio(text) == value


@pytest.mark.parametrize(
    "text",
    [
        " 1.5",
        "1.5 ",
        "\t1.5",
        "1.5\n",
        "1__5",
        "1.5_",
        "_1",
        "1,5",
        "1.5x",
        "abc",
        "0x1.8",  # a Go hex float needs a p exponent
        "1e",
        "1e+",
        ".",
        "+",
        "--1",
        "1e400",  # ErrRange
        "-1e400",
        "0x1p2000",
        "NaN",
        "nan",
        "+nan",  # Go: no sign before NaN
        "Inf",
        "+Inf",
        "-inf",
        "Infinity",
        "-infinity",
        "\u0661.5",
    ],
)
def test_parse_ratio_rejects(text: str) -> None:
    with pytest.raises(InvalidRatio) as raised:
        parse_ratio(text)
    assert raised.value.path == RATIO_PATH == "kubevirtConfiguration.additionalGuestMemoryOverheadRatio"


# --------------------------------------------------------------------------------------------------
# The ratio step
# --------------------------------------------------------------------------------------------------

RATIO_CASES = [
    # (ratio, requests.memory, quantity, bytes, ratio component or None)
    (None, "1Gi", "304087040", BASE_1GI, None),
    ("", "1Gi", "304087040", BASE_1GI, None),
    ("1.5", "1Gi", "456131040", 456131040, 152044000),  # k = 304088, +152044 kB
    ("0", "1Gi", "-960", -960, -304088000),
    ("1.000001", "1Gi", "304087040", BASE_1GI, 0),  # 304088 * 1e-6 truncates to 0
    ("1", "1Gi", "304087040", BASE_1GI, 0),
    ("2", "1Gi", "608175040", 608175040, 304088000),
    ("2.335", "1Gi", "710044040", 710044040, 405957000),
    ("-1", "1Gi", "-304088960", -304088960, -608176000),
    ("0.5", "1Gi", "152043040", 152043040, -152044000),
    ("1_5", "1Gi", "4561319040", 4561319040, 4257232000),
    ("0x1.8p0", "1Gi", "456131040", 456131040, 152044000),
    ("+1.5", "1Gi", "456131040", 456131040, 152044000),
    ("15e-1", "1Gi", "456131040", 456131040, 152044000),
    # no memory: BinarySI stays BinarySI; k = ceil(301989.888) = 301990
    ("1", None, "288Mi", BASE, 0),
    ("1.0", None, "288Mi", BASE, 0),
    ("1.5", None, "452984888", 452984888, 150995000),
    ("2", None, "603979888", 603979888, 301990000),
    ("1e9", None, "301989999999999888", 301989999999999888, 301989999698010000),
    ("1e1_0", None, "3019899999999999888", 3019899999999999888, 3019899999698010000),
]


@pytest.mark.parametrize(("text", "memory", "quantity", "total", "part"), RATIO_CASES)
def test_ratio(
    service: OverheadService,
    text: str | None,
    memory: str | None,
    quantity: str,
    total: int,
    part: int | None,
) -> None:
    answer = compute(service, mem_vmi(memory), **(ratio(text) if text is not None else {}))
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}
    ratio_parts = [c["bytes"] for c in answer["components"] if c["name"] == "ratio"]
    assert ratio_parts == ([] if part is None else [part])
    assert sum(c["bytes"] for c in answer["components"]) == total


@pytest.mark.parametrize(
    "text",
    [
        " 1.5",
        "1.5 ",
        "1__5",
        "1.5_",
        "abc",
        "1,5",
        "0x1.8",
        "1e400",
        "-1e400",
        "NaN",
        "Inf",
        "-Inf",
        "+Infinity",
        "1e30",  # float64(k) * (r - 1) is beyond int64
        "-1e30",
        "1e13",  # fits int64 kB, but the total overflows int64 bytes
    ],
)
def test_ratio_rejected(service: OverheadService, text: str) -> None:
    with pytest.raises(InvalidRatio) as raised:
        compute(service, mem_vmi(), **ratio(text))
    assert raised.value.path == RATIO_PATH


@pytest.mark.parametrize("value", [1.5, 2, Decimal("1.5"), True, ["1.5"], "1" * 101])
def test_ratio_must_be_a_short_string(service: OverheadService, value: Any) -> None:
    with pytest.raises(InputError) as raised:
        compute(service, mem_vmi(), **ratio(value))
    assert raised.value.path == RATIO_PATH


def test_ratio_multiplies_dedicated_cpu_and_reserved_overhead(service: OverheadService) -> None:
    # 288Mi + 100Mi = 406,847,488; k = 406,848; ratio 2 adds 406,848,000
    for domain in (
        {"cpu": {"dedicatedCpuPlacement": True}},
        {"memory": {"reservedOverhead": {"addedOverhead": "100Mi"}}},
    ):
        answer = compute(service, {"spec": {"domain": domain}}, **ratio("2"))
        assert answer["overhead"] == {"quantity": "813695488", "bytes": 813695488}


# --------------------------------------------------------------------------------------------------
# Network-binding memory: after the ratio, never multiplied
# --------------------------------------------------------------------------------------------------

PLUGINS = {
    "p1": {"sidecarImage": "x", "computeResourceOverhead": {"requests": {"memory": "100Mi"}}},
    "p2": {"computeResourceOverhead": {"requests": {"memory": "50Mi", "cpu": "100m"}}},
    "half": {"computeResourceOverhead": {"requests": {"memory": "1.5Mi"}}},
    "nomem": {"sidecarImage": "y"},
    "cpuonly": {"computeResourceOverhead": {"requests": {"cpu": "100m"}}},
    "norequests": {"computeResourceOverhead": {}},
    # virt-config's JSON merge drops an empty ResourceList (nil: the plugin is skipped) and
    # marshals a null memory as "0"
    "emptyrequests": {"computeResourceOverhead": {"requests": {}}},
    "nullmemory": {"computeResourceOverhead": {"requests": {"memory": None}}},
    "null": None,
}


def _ifaces(*specs: str) -> dict[str, Any]:
    interfaces = []
    for index, spec in enumerate(specs):
        if spec == "passt":
            interfaces.append({"name": f"i{index}", "passtBinding": {}})
        else:
            interfaces.append({"name": f"i{index}", "binding": {"name": spec}})
    return {"spec": {"domain": {"devices": {"interfaces": interfaces}}}}


NETWORK_CASES = [
    # (interfaces, ratio, quantity, bytes, networkBinding component)
    (("passt",), None, "538Mi", BASE + 250 * Mi, 250 * Mi),
    (("passt", "passt"), None, "538Mi", BASE + 250 * Mi, 250 * Mi),
    (("p1",), None, "388Mi", BASE + 100 * Mi, 100 * Mi),
    (("p1", "p1"), None, "388Mi", BASE + 100 * Mi, 100 * Mi),
    (("p1", "p2"), None, "438Mi", BASE + 150 * Mi, 150 * Mi),
    (("p2", "p1", "p2"), None, "438Mi", BASE + 150 * Mi, 150 * Mi),
    (("half",), None, "296448Ki", BASE + 1572864, 1572864),
    (("zzz",), None, "288Mi", BASE, 0),  # unregistered
    (("nomem",), None, "288Mi", BASE, 0),
    (("cpuonly",), None, "288Mi", BASE, 0),
    (("norequests",), None, "288Mi", BASE, 0),
    (("emptyrequests",), None, "288Mi", BASE, 0),
    (("nullmemory", "p1"), None, "388Mi", BASE + 100 * Mi, 100 * Mi),
    (("null",), None, "288Mi", BASE, 0),
    (("passt", "p1", "p2", "zzz", "p1"), None, "688Mi", BASE + 400 * Mi, 400 * Mi),
    # ratio 2 doubles 288Mi to 603,979,888; the network memory is added afterwards, unmultiplied
    (("passt",), "2", "866123888", 603979888 + 250 * Mi, 250 * Mi),
    (("p1",), "2", "708837488", 603979888 + 100 * Mi, 100 * Mi),
]


@pytest.mark.parametrize(("interfaces", "text", "quantity", "total", "network"), NETWORK_CASES)
def test_network_binding_memory(
    service: OverheadService,
    interfaces: tuple[str, ...],
    text: str | None,
    quantity: str,
    total: int,
    network: int,
) -> None:
    config: dict[str, Any] = {"network": {"binding": PLUGINS}}
    if text is not None:
        config["additionalGuestMemoryOverheadRatio"] = text
    answer = compute(service, _ifaces(*interfaces), kubevirtConfiguration=config)
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}
    names = [c["name"] for c in answer["components"]]
    assert names[-1] == "networkBinding"
    assert answer["components"][-1]["bytes"] == network
    if text is not None:
        assert names[-2] == "ratio"  # the ratio comes first
    assert sum(c["bytes"] for c in answer["components"]) == total


@pytest.mark.parametrize(
    ("interfaces", "quantity", "total"),
    [
        # The overhead is exactly zero when the network memory arrives, so Go's Add hands the
        # network sum's format over: 100,000,000 prints "100M" as DecimalSI.
        (("m",), "100M", 100000000),
        (("passt",), "250Mi", 250 * Mi),
        (("passt", "m"), "362144000", 250 * Mi + 100000000),
        ((), "0", 0),
    ],
)
def test_network_memory_on_a_zero_overhead(
    service: OverheadService, interfaces: tuple[str, ...], quantity: str, total: int
) -> None:
    vmi = _ifaces(*interfaces)
    vmi["spec"]["domain"]["memory"] = {"reservedOverhead": {"addedOverhead": "-288Mi"}}
    config = {"network": {"binding": {"m": {"computeResourceOverhead": {"requests": {"memory": "100M"}}}}}}
    answer = compute(service, vmi, kubevirtConfiguration=config)
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}


def test_passt_without_kubevirt_configuration(service: OverheadService) -> None:
    answer = compute(service, _ifaces("passt"))
    assert answer["overhead"] == {"quantity": "538Mi", "bytes": BASE + 250 * Mi}


def test_no_network_component_without_interfaces(service: OverheadService) -> None:
    answer = compute(service, mem_vmi(), kubevirtConfiguration={"network": {"binding": PLUGINS}})
    assert "networkBinding" not in [c["name"] for c in answer["components"]]
    assert answer["overhead"]["bytes"] == BASE


@pytest.mark.parametrize(
    ("binding", "path", "error"),
    [
        (
            {"p1": {"computeResourceOverhead": {"requests": {"memory": "lots"}}}},
            "kubevirtConfiguration.network.binding.p1.computeResourceOverhead.requests.memory",
            InvalidQuantity,
        ),
        (
            {"p1": {"computeResourceOverhead": {"requests": []}}},
            "kubevirtConfiguration.network.binding.p1.computeResourceOverhead.requests",
            InputError,
        ),
        (
            {"p1": {"computeResourceOverhead": "x"}},
            "kubevirtConfiguration.network.binding.p1.computeResourceOverhead",
            InputError,
        ),
        ({"p1": "x"}, "kubevirtConfiguration.network.binding.p1", InputError),
        ([], "kubevirtConfiguration.network.binding", InputError),
    ],
)
def test_network_binding_errors(
    service: OverheadService, binding: Any, path: str, error: type[InputError]
) -> None:
    with pytest.raises(error) as raised:
        compute(service, _ifaces("p1"), kubevirtConfiguration={"network": {"binding": binding}})
    assert raised.value.path == path


# --------------------------------------------------------------------------------------------------
# cpuArch precedence
# --------------------------------------------------------------------------------------------------

ARM = 416 * Mi  # 288Mi + 128Mi pflash

ARCH_CASES = [
    # no kubevirtConfiguration: the request's cpuArch beats the VMI's architecture
    ({}, None, None, "amd64", BASE),
    ({"cpuArch": "arm64"}, None, None, "arm64", ARM),
    ({"cpuArch": "arm64"}, "amd64", None, "arm64", ARM),
    ({"cpuArch": "amd64"}, "arm64", None, "amd64", BASE),
    ({}, "arm64", None, "arm64", ARM),
    # with kubevirtConfiguration: virt-controller uses the VMI's architecture first
    ({"cpuArch": "arm64"}, "amd64", {}, "amd64", BASE),
    ({"cpuArch": "amd64"}, "arm64", {}, "arm64", ARM),
    ({"cpuArch": "arm64"}, None, {}, "arm64", ARM),
    ({}, None, {}, "amd64", BASE),
    ({}, "arm64", {"additionalGuestMemoryOverheadRatio": ""}, "arm64", ARM),
    # "arm64" must match exactly
    ({"cpuArch": "aarch64"}, None, None, "aarch64", BASE),
    ({"cpuArch": "ARM64"}, None, None, "ARM64", BASE),
    ({"cpuArch": "s390x"}, None, None, "s390x", BASE),
]


@pytest.mark.parametrize(("extra", "vmi_arch", "config", "arch", "total"), ARCH_CASES)
def test_cpu_arch_precedence(
    service: OverheadService,
    extra: dict[str, Any],
    vmi_arch: str | None,
    config: dict[str, Any] | None,
    arch: str,
    total: int,
) -> None:
    vmi: dict[str, Any] = {"spec": {"domain": {}}}
    if vmi_arch is not None:
        vmi["spec"]["architecture"] = vmi_arch
    body = dict(extra)
    if config is not None:
        body["kubevirtConfiguration"] = config
    answer = compute(service, vmi, **body)
    assert answer["cpuArch"] == arch
    assert answer["overhead"]["bytes"] == total
    pflash = [c["bytes"] for c in answer["components"] if c["name"] == "pflash"]
    assert pflash == ([128 * Mi] if total == ARM else [])


def test_empty_cpu_arch_is_not_arm64(service: OverheadService) -> None:
    assert compute(service, cpuArch="")["overhead"]["bytes"] == BASE


def test_default_arch_is_configurable() -> None:
    service = OverheadService(TableRegistry.builtin(), default_arch="arm64", default_table="kubevirt-main")
    answer = service.compute({"vmi": {}})
    assert (answer["cpuArch"], answer["overhead"]["bytes"]) == ("arm64", ARM)


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def test_components_plain(service: OverheadService) -> None:
    answer = compute(service, mem_vmi("1Gi"))
    assert answer["components"] == [
        {"name": n, "bytes": b}
        for n, b in [
            ("pagetables", 2097152),
            *UPSTREAM_PARTS,
            ("vcpus", 8 * Mi),
            ("ioThread", 8 * Mi),
            ("video", 32 * Mi),
        ]
    ]
    assert answer["overhead"] == {"quantity": "304087040", "bytes": BASE_1GI}
    assert answer["nodeOverhead"] == {"quantity": "0", "bytes": 0}
    assert answer["nodeComponents"] == []
    assert answer["table"] == {"id": "kubevirt-main", "provisional": False}


FULL_VMI = {
    "spec": {
        "domain": {
            "cpu": {"cores": 2, "dedicatedCpuPlacement": True},
            "resources": {"requests": {"memory": "1Gi"}},
            "launchSecurity": {"sev": {}},
            "devices": {
                "hostDevices": [{"name": "h", "deviceName": "v/d"}],
                "gpus": [{"name": "g", "deviceName": "v/g"}],
                "tpm": {},
                "interfaces": [{"name": "a", "passtBinding": {}}, {"name": "b", "sriov": {}}],
            },
        },
        "volumes": [{"name": "m", "downwardMetrics": {}}],
        "livenessProbe": {"exec": {"command": ["true"]}},
        "readinessProbe": {"exec": {"command": ["true"]}},
    }
}
FULL_PARTS = [
    ("pagetables", 2097152),
    *UPSTREAM_PARTS,
    ("vcpus", 16 * Mi),
    ("ioThread", 8 * Mi),
    ("video", 32 * Mi),
    ("vfio", Gi),  # once, however many devices
    ("downwardMetrics", Mi),
    ("probes", 120 * Mi),
    ("sev", 256 * Mi),
    ("tpm", 53 * Mi),
    ("dedicatedCpu", 100 * Mi),
]


def test_components_everything(service: OverheadService) -> None:
    # 2,097,152 + 1850Mi = 1,941,962,752; k = 1,941,963; ratio 1.5 adds 970,981 kB; passt 250Mi after
    answer = compute(service, FULL_VMI, **ratio("1.5"))
    expected = [*FULL_PARTS, ("ratio", 970981000), ("networkBinding", 250 * Mi)]
    assert answer["components"] == [{"name": n, "bytes": b} for n, b in expected]
    assert answer["overhead"] == {"quantity": "3175087752", "bytes": 3175087752}
    assert sum(b for _, b in expected) == 3175087752


def test_components_everything_on_arm64(service: OverheadService) -> None:
    answer = compute(service, FULL_VMI, cpuArch="arm64")
    names = [c["name"] for c in answer["components"]]
    assert names[names.index("video") + 1] == "pflash"
    total = sum(b for _, b in FULL_PARTS) + 128 * Mi + 250 * Mi
    assert answer["overhead"]["bytes"] == total == sum(c["bytes"] for c in answer["components"])


@pytest.mark.parametrize(
    ("domain", "spec", "quantity", "total"),
    [
        # reservedOverhead, added as it is (fractions, negatives) before the ratio
        ({"memory": {"reservedOverhead": {"addedOverhead": "0.5"}}}, {}, "301989888500m", 301989889),
        (
            {
                "memory": {"reservedOverhead": {"addedOverhead": "0.5"}},
                "resources": {"requests": {"memory": "1Gi"}},
            },
            {},
            "304087040500m",
            304087041,
        ),
        (
            {
                "memory": {"reservedOverhead": {"addedOverhead": "100m"}},
                "resources": {"requests": {"memory": "1Gi"}},
            },
            {},
            "304087040100m",
            304087041,
        ),
        ({"memory": {"reservedOverhead": {"addedOverhead": "-100Mi"}}}, {}, "188Mi", 188 * Mi),
        ({"memory": {"reservedOverhead": {"addedOverhead": "-288Mi"}}}, {}, "0", 0),
        ({"memory": {"reservedOverhead": {"addedOverhead": "1Gi"}}}, {}, "1312Mi", 1312 * Mi),
        # exec probes: 10Mi each plus 100Mi once
        ({}, {"livenessProbe": {"exec": {}}}, "398Mi", 398 * Mi),
        ({}, {"livenessProbe": {"exec": {}}, "readinessProbe": {"exec": {}}}, "408Mi", 408 * Mi),
        ({}, {"livenessProbe": {"httpGet": {"port": 80}}}, "288Mi", BASE),
        # graphics off: no 32Mi
        ({"devices": {"autoattachGraphicsDevice": False}}, {}, "256Mi", 256 * Mi),
        # guaranteed QoS counts like dedicated CPUs
        (
            {"resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi", "cpu": "1000m"}}},
            {},
            "388Mi",
            388 * Mi,
        ),
        # vCPUs: 8Mi each; a uint32-wrapping topology counts as 1
        ({"cpu": {"cores": 4, "threads": 2}}, {}, "344Mi", 344 * Mi),
        ({"cpu": {"sockets": 65536, "cores": 65536}}, {}, "288Mi", BASE),
        # limits.cpu 2^32 without a cpu struct: 8Mi * 2^32 = 2^55 in int64
        ({"resources": {"limits": {"cpu": "4294967296"}}}, {}, "34359738648Mi", 280 * Mi + 2**55),
        # limits.cpu 1E: 8Mi * 10^18 wraps in int64
        (
            {"resources": {"limits": {"cpu": "1E"}}},
            {},
            "6172859957528Mi",
            280 * Mi + ((8 * Mi * 10**18 + 2**63) % 2**64 - 2**63),
        ),
    ],
)
def test_overhead_terms(
    service: OverheadService, domain: dict[str, Any], spec: dict[str, Any], quantity: str, total: int
) -> None:
    answer = compute(service, {"spec": {"domain": domain, **spec}})
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}


@pytest.mark.parametrize(
    ("memory", "pagetables", "quantity", "total"),
    [
        ("1", 1, "301989889", BASE + 1),
        ("511", 1, "301989889", BASE + 1),
        ("512", 1, "301989889", BASE + 1),
        ("1000", 1, "301989889", BASE + 1),
        ("1001", 3, "301989891", BASE + 3),
        ("1Mi", 2048, "301991936", BASE + 2048),  # 1049000 // 512
        ("0", 0, "288Mi", BASE),
        ("-1Gi", -2097152, "299892736", BASE - 2097152),
        # the memform-overflow vectors: ceil(R/1000) * 1000 wraps in int64
        ("8Ei", -18014398509481983, "-18014398207492095", -18014398207492095),
        ("9Ei", -18014398509481983, "-18014398207492095", -18014398207492095),
        ("1E19", -16497547018963968, "-16497546716974080", -16497546716974080),
    ],
)
def test_page_tables(
    service: OverheadService, memory: str, pagetables: int, quantity: str, total: int
) -> None:
    answer = compute(service, mem_vmi(memory))
    assert answer["components"][0] == {"name": "pagetables", "bytes": pagetables}
    assert answer["overhead"] == {"quantity": quantity, "bytes": total}


def test_page_tables_ignore_limits_guest_and_hugepages(service: OverheadService) -> None:
    for domain in (
        {"resources": {"limits": {"memory": "1Gi"}}},
        {"memory": {"guest": "1Gi"}},
        {"memory": {"hugepages": {"pageSize": "2Mi"}, "guest": "1Gi"}},
    ):
        answer = compute(service, {"spec": {"domain": domain}})
        assert answer["components"][0] == {"name": "pagetables", "bytes": 0}
        assert answer["overhead"] == {"quantity": "288Mi", "bytes": BASE}


# --------------------------------------------------------------------------------------------------
# Request errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "error"),
    [
        ({"vmi": {}, "foo": 1}, "foo", InputError),
        ({"vmi": {}, "VMI": {}}, "VMI", InputError),
        ({}, "vmi", InputError),
        ({"vmi": None}, "vmi", InputError),
        ({"cpuArch": "amd64"}, "vmi", InputError),
        ({"vmi": []}, "vmi", InputError),
        ({"vmi": {}, "table": "nope"}, "table", UnknownTable),
        ({"vmi": {}, "table": 5}, "table", InputError),
        ({"vmi": {}, "cpuArch": 5}, "cpuArch", InputError),
        ({"vmi": {}, "cpuArch": "a" * 65}, "cpuArch", InputError),
        ({"vmi": {}, "kubevirtConfiguration": []}, "kubevirtConfiguration", InputError),
        ({"vmi": {"spec": {"domain": {"cpu": {"cores": -1}}}}}, "vmi.spec.domain.cpu.cores", InputError),
        (
            {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "1Gb"}}}}}},
            "vmi.spec.domain.resources.requests.memory",
            InvalidQuantity,
        ),
    ],
)
def test_request_errors(
    service: OverheadService, body: dict[str, Any], path: str, error: type[InputError]
) -> None:
    with pytest.raises(error) as raised:
        service.compute(body)
    assert raised.value.path == path


@pytest.mark.parametrize("body", [None, [], "vmi", 5])
def test_request_must_be_an_object(service: OverheadService, body: Any) -> None:
    with pytest.raises(InputError) as raised:
        service.compute(body)
    assert raised.value.path == ""


def test_default_table(service: OverheadService) -> None:
    answer = service.compute({"vmi": {}})
    assert answer["table"] == {"id": "kubevirt-v1.9.0", "provisional": False}
    assert answer["overhead"] == {"quantity": "268Mi", "bytes": 268 * Mi}


# --------------------------------------------------------------------------------------------------
# compute_batch
# --------------------------------------------------------------------------------------------------


def test_batch_bad_item_in_the_middle(service: OverheadService) -> None:
    good = {"vmi": mem_vmi("1Gi"), "table": "kubevirt-main"}
    bad = {"vmi": {"spec": {"domain": {"cpu": {"cores": -1}}}}}
    answers = service.compute_batch([good, bad, good])
    assert len(answers) == 3
    assert answers[0]["overhead"] == answers[2]["overhead"] == {"quantity": "304087040", "bytes": BASE_1GI}
    problem = answers[1]
    assert problem["type"] == "urn:overhead-service:problem:invalid-input"
    assert problem["status"] == 422
    assert problem["errors"][0]["path"] == "items[1].vmi.spec.domain.cpu.cores"
    assert problem["detail"].startswith("items[1].vmi.spec.domain.cpu.cores: ")


@pytest.mark.parametrize(
    ("item", "path", "kind"),
    [
        (
            {"vmi": {}, **ratio("abc")},
            "items[0].kubevirtConfiguration.additionalGuestMemoryOverheadRatio",
            "invalid-ratio",
        ),
        ({"vmi": {}, "table": "nope"}, "items[0].table", "unknown-table"),
        ({"vmi": {}, "foo": 1}, "items[0].foo", "invalid-input"),
        ({}, "items[0].vmi", "invalid-input"),
        (None, "items[0]", "invalid-input"),
        ([], "items[0]", "invalid-input"),
        (
            {"vmi": {"spec": {"domain": {"resources": {"requests": {"memory": "x"}}}}}},
            "items[0].vmi.spec.domain.resources.requests.memory",
            "invalid-quantity",
        ),
    ],
)
def test_batch_problem_documents(service: OverheadService, item: Any, path: str, kind: str) -> None:
    (problem,) = service.compute_batch([item])
    assert problem["type"] == f"urn:overhead-service:problem:{kind}"
    assert problem["status"] == 422  # even for an unknown table (404 on its own)
    assert problem["errors"][0]["path"] == path


def test_batch_limits(service: OverheadService) -> None:
    assert service.compute_batch([]) == []
    assert len(service.compute_batch([None] * 10000)) == 10000
    with pytest.raises(InputError) as raised:
        service.compute_batch([None] * 10001)
    assert raised.value.path == "items"
    with pytest.raises(InputError) as raised:
        service.compute_batch({"items": []})
    assert raised.value.path == "items"
