"""Tests for overhead_service.model.vmi: what upstream's GetMemoryOverhead reads from a VMI.

Expected values follow the Go code, not the module:

* vCPUs: ``hardware.GetNumberOfVCPUs`` (``pkg/util/hardware/hw_utils.go``) multiplies cores,
  sockets and threads as uint32, skipping zeros; without a ``domain.cpu`` struct
  ``GetMemoryOverhead`` (``pkg/hypervisor/kvm/hypervisorbackend.go``) takes ``limits.cpu.Value()``
  if the *key* is present, else ``requests.cpu.Value()``; then at least 1;
* ``vmitrait.HasVFIO``: non-empty hostDevices or gpus, or any interface with ``sriov``;
* ``tpm.HasDevice``: ``tpm`` present and ``enabled`` nil or true;
* SEV: ``launchSecurity.sev`` or ``.snp`` non-nil;
* ``WantsToHaveQOSGuaranteed`` (``staging/src/kubevirt.io/api/core/v1/types.go``) with exact
  ``Quantity.Cmp``;
* JSON decoding errors as ``encoding/json`` would raise them, reported with the JSON path.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from overhead_service.errors import InputError, InvalidQuantity
from overhead_service.model.vmi import VmiFeatures, extract_features, read_quantity

Mi = 1 << 20
Gi = 1 << 30


def vmi(domain: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(spec)
    if domain is not None:
        body["domain"] = domain
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "spec": body}


def resources(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests is not None:
        res["requests"] = requests
    if limits is not None:
        res["limits"] = limits
    return {"resources": res}


def devices(**devs: Any) -> dict[str, Any]:
    return {"devices": devs}


def value(q: Any) -> Fraction:
    return Fraction(*q.as_fraction())


# --------------------------------------------------------------------------------------------------
# vCPUs
# --------------------------------------------------------------------------------------------------

VCPU_CASES = [
    ("nothing", {}, 1),
    ("cpu-empty", {"cpu": {}}, 1),
    ("cores", {"cpu": {"cores": 4}}, 4),
    ("sockets-only", {"cpu": {"sockets": 2}}, 2),
    ("threads-only", {"cpu": {"threads": 3}}, 3),
    ("product", {"cpu": {"cores": 2, "sockets": 3, "threads": 4}}, 24),
    ("zero-cores", {"cpu": {"cores": 0, "sockets": 2, "threads": 2}}, 4),
    ("zero-sockets", {"cpu": {"cores": 3, "sockets": 0, "threads": 2}}, 6),
    ("all-zero", {"cpu": {"cores": 0, "sockets": 0, "threads": 0}}, 1),
    ("uint32-wraps-to-zero", {"cpu": {"sockets": 65536, "cores": 65536}}, 1),
    # cores*sockets wraps to 0, so threads is *taken*, not multiplied
    ("wrap-then-threads", {"cpu": {"sockets": 65536, "cores": 65536, "threads": 2}}, 2),
    ("wrap-partial", {"cpu": {"cores": 65537, "sockets": 65537}}, 131073),
    ("wrap-max", {"cpu": {"cores": 4294967295, "sockets": 2}}, 4294967294),
    ("max-cores", {"cpu": {"cores": 4294967295}}, 4294967295),
    ("null-topology", {"cpu": {"cores": None, "sockets": None, "threads": 5}}, 5),
    # a present cpu struct ignores resources
    ("cpu-struct-ignores-limits", {"cpu": {}, **resources(limits={"cpu": 8})}, 1),
    (
        "dedicated-ignores-limits",
        {"cpu": {"dedicatedCpuPlacement": True}, **resources(limits={"cpu": "8"})},
        1,
    ),
    ("model-ignores-requests", {"cpu": {"model": "host-passthrough"}, **resources(requests={"cpu": "4"})}, 1),
    ("cores-beat-limits", {"cpu": {"cores": 2}, **resources(limits={"cpu": "16"})}, 2),
    # cpu: null is an absent pointer, so resources count
    ("cpu-null", {"cpu": None, **resources(limits={"cpu": "8"})}, 8),
    # no cpu struct: the limits *key* wins over requests
    ("limits-zero-key-wins", resources(requests={"cpu": "4"}, limits={"cpu": "0"}), 1),
    ("limits-null-key-wins", resources(requests={"cpu": "4"}, limits={"cpu": None}), 1),
    ("limits-beat-requests", resources(requests={"cpu": "4"}, limits={"cpu": "2"}), 2),
    ("requests-only", resources(requests={"cpu": "3"}), 3),
    ("memory-limit-not-cpu", resources(requests={"cpu": "3"}, limits={"memory": "1Gi"}), 3),
    ("500m", resources(limits={"cpu": "500m"}), 1),
    ("1500m", resources(limits={"cpu": "1500m"}), 2),
    ("2.5", resources(limits={"cpu": "2.5"}), 3),
    ("1.999", resources(limits={"cpu": "1.999"}), 2),
    ("100m", resources(requests={"cpu": "100m"}), 1),
    ("64", resources(limits={"cpu": "64"}), 64),
    ("json-number", resources(limits={"cpu": 8}), 8),
    ("json-decimal", resources(limits={"cpu": Decimal("2.5")}), 3),
    ("negative", resources(limits={"cpu": "-2"}), 1),
    ("negative-fraction", resources(limits={"cpu": "-0.5"}), 1),
    ("2^32", resources(limits={"cpu": "4294967296"}), 4294967296),
    # Value() overflow: positiveScaleInt64's loop returns 0, x10^9 wraps negative
    ("1E19-value-zero", resources(limits={"cpu": "1E19"}), 1),
    ("10E-value-zero", resources(limits={"cpu": "10E"}), 1),
    ("wrapped-negative", resources(limits={"cpu": "10000000000G"}), 1),
]


@pytest.mark.parametrize(("domain", "expected"), [c[1:] for c in VCPU_CASES], ids=[c[0] for c in VCPU_CASES])
def test_vcpus(domain: dict[str, Any], expected: int) -> None:
    assert extract_features(vmi(domain)).vcpus == expected


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "request_bytes", "limit_bytes", "guest_bytes"),
    [
        ({}, 0, 0, 0),
        (resources(requests={"memory": "1Gi"}), Gi, 0, Gi),
        (resources(requests={"memory": 1073741824}), Gi, 0, Gi),
        (resources(limits={"memory": "1Gi"}), 0, Gi, Gi),
        (resources(requests={"memory": "1Gi"}, limits={"memory": "2Gi"}), Gi, 2 * Gi, Gi),
        ({"memory": {"guest": "2Gi"}}, 0, 0, 2 * Gi),
        ({"memory": {"guest": "2Gi"}, **resources(requests={"memory": "3Gi"})}, 3 * Gi, 0, 2 * Gi),
        ({"memory": {"hugepages": {"pageSize": "2Mi"}}}, 0, 0, 0),
        ({"memory": {"hugepages": {"pageSize": "1Gi"}, "guest": "4Gi"}}, 0, 0, 4 * Gi),
        (resources(requests={"memory": "1.5Gi"}), 1536 * Mi, 0, 1536 * Mi),
        (resources(requests={"memory": " 1Gi "}), Gi, 0, Gi),
        (resources(requests={"memory": None}), 0, 0, 0),
    ],
)
def test_memory(domain: dict[str, Any], request_bytes: int, limit_bytes: int, guest_bytes: int) -> None:
    f = extract_features(vmi(domain))
    # Page tables are computed from requests.memory only.
    assert value(f.memory_request) == request_bytes
    assert f.memory_request.is_zero() is (request_bytes == 0)
    assert value(f.memory_limit) == limit_bytes
    assert value(f.guest_memory) == guest_bytes


# --------------------------------------------------------------------------------------------------
# Devices, probes, launch security, TPM
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ({}, True),
        (devices(), True),
        (devices(autoattachGraphicsDevice=None), True),
        (devices(autoattachGraphicsDevice=True), True),
        (devices(autoattachGraphicsDevice=False), False),
    ],
)
def test_graphics(domain: dict[str, Any], expected: bool) -> None:
    assert extract_features(vmi(domain)).graphics is expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ({}, False),
        (devices(hostDevices=[{"name": "h", "deviceName": "vendor/dev"}]), True),
        (devices(gpus=[{"name": "g", "deviceName": "nvidia/gpu"}]), True),
        (devices(hostDevices=[{"name": "a"}, {"name": "b"}], gpus=[{"name": "g"}]), True),
        (devices(interfaces=[{"name": "a", "sriov": {}}]), True),
        (devices(interfaces=[{"name": "a", "masquerade": {}}, {"name": "b", "sriov": {}}]), True),
        (devices(interfaces=[{"name": "a", "masquerade": {}}]), False),
        (devices(interfaces=[{"name": "a", "sriov": None}]), False),
        (devices(hostDevices=[]), False),
        (devices(gpus=[]), False),
        (devices(hostDevices=None, gpus=None, interfaces=None), False),
        (devices(interfaces=[]), False),
        # a null element still decodes to a struct and makes the slice non-empty
        (devices(hostDevices=[None]), True),
        (devices(gpus=[None]), True),
        (devices(interfaces=[None]), False),
    ],
)
def test_vfio(domain: dict[str, Any], expected: bool) -> None:
    assert extract_features(vmi(domain)).vfio is expected


@pytest.mark.parametrize(
    ("spec", "domain", "expected"),
    [
        ({}, {}, False),
        ({"volumes": [{"name": "m", "downwardMetrics": {}}]}, {}, True),
        (
            {
                "volumes": [
                    {"name": "d", "containerDisk": {"image": "x"}},
                    {"name": "m", "downwardMetrics": {}},
                ]
            },
            {},
            True,
        ),
        ({"volumes": [{"name": "d", "containerDisk": {"image": "x"}}]}, {}, False),
        ({"volumes": [{"name": "m", "downwardMetrics": None}]}, {}, False),
        ({"volumes": []}, {}, False),
        ({"volumes": [None]}, {}, False),
        # the virtio-serial device does not count
        ({}, devices(downwardMetrics={}), False),
    ],
)
def test_downward_metrics_volume(spec: dict[str, Any], domain: dict[str, Any], expected: bool) -> None:
    assert extract_features(vmi(domain, **spec)).downward_metrics_volume is expected


EXEC = {"exec": {"command": ["cat", "/tmp/healthy"]}}
HTTP = {"httpGet": {"port": 80}}
TCP = {"tcpSocket": {"port": 22}}
AGENT: dict[str, Any] = {"guestAgentPing": {}}


@pytest.mark.parametrize(
    ("spec", "liveness", "readiness", "count"),
    [
        ({}, False, False, 0),
        ({"livenessProbe": EXEC}, True, False, 1),
        ({"readinessProbe": EXEC}, False, True, 1),
        ({"livenessProbe": EXEC, "readinessProbe": EXEC}, True, True, 2),
        ({"livenessProbe": HTTP, "readinessProbe": TCP}, False, False, 0),
        ({"livenessProbe": AGENT}, False, False, 0),
        ({"livenessProbe": TCP, "readinessProbe": EXEC}, False, True, 1),
        ({"livenessProbe": {"exec": None, "httpGet": {"port": 1}}}, False, False, 0),
        ({"livenessProbe": None, "readinessProbe": None}, False, False, 0),
        ({"livenessProbe": {}}, False, False, 0),
        ({"livenessProbe": {"exec": {}}}, True, False, 1),
    ],
)
def test_exec_probes(spec: dict[str, Any], liveness: bool, readiness: bool, count: int) -> None:
    f = extract_features(vmi({}, **spec))
    assert (f.liveness_exec, f.readiness_exec, f.exec_probes) == (liveness, readiness, count)


@pytest.mark.parametrize(
    ("launch", "expected"),
    [
        (None, False),
        ({}, False),  # s390x Secure Execution
        ({"sev": {}}, True),
        ({"sev": {"policy": {"encryptedState": True}}}, True),
        ({"sev": {"policy": {"encryptedState": False}}}, True),
        ({"sev": {"policy": {}}}, True),
        ({"snp": {}}, True),
        ({"sev": {}, "snp": {}}, True),
        ({"tdx": {}}, False),
        ({"sev": None}, False),
        ({"snp": None, "tdx": {}}, False),
    ],
)
def test_sev(launch: dict[str, Any] | None, expected: bool) -> None:
    assert extract_features(vmi({"launchSecurity": launch})).sev is expected


@pytest.mark.parametrize(
    ("tpm", "expected"),
    [
        ("absent", False),
        (None, False),
        ({}, True),
        ({"enabled": True}, True),
        ({"enabled": None}, True),
        ({"persistent": True}, True),
        ({"enabled": False}, False),
        ({"enabled": False, "persistent": True}, False),
    ],
)
def test_tpm(tpm: Any, expected: bool) -> None:
    domain = devices() if tpm == "absent" else devices(tpm=tpm)
    assert extract_features(vmi(domain)).tpm is expected


# --------------------------------------------------------------------------------------------------
# Dedicated CPUs and guaranteed QoS
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ({}, False),
        ({"cpu": {"dedicatedCpuPlacement": True}}, True),
        ({"cpu": {"dedicatedCpuPlacement": False}}, False),
        ({"cpu": {"dedicatedCpuPlacement": None}}, False),
        ({"cpu": {"cores": 4}}, False),
    ],
)
def test_dedicated_cpu(domain: dict[str, Any], expected: bool) -> None:
    assert extract_features(vmi(domain)).dedicated_cpu is expected


QOS_CASES = [
    ("equal", {"memory": "1Gi", "cpu": "2"}, {"memory": "1Gi", "cpu": "2"}, True),
    ("equal-different-units", {"memory": "1Gi", "cpu": "1"}, {"memory": "1073741824", "cpu": "1000m"}, True),
    ("equal-json-numbers", {"memory": 1073741824, "cpu": 1}, {"memory": "1Gi", "cpu": "1"}, True),
    ("equal-fractions", {"memory": "1.5Gi", "cpu": "0.5"}, {"memory": "1536Mi", "cpu": "500m"}, True),
    ("memory-only-in-limits", {"cpu": "1"}, {"memory": "1Gi", "cpu": "1"}, True),
    ("memory-zero-request", {"memory": "0", "cpu": "1"}, {"memory": "1Gi", "cpu": "1"}, True),
    ("memory-request-no-limit", {"memory": "1Gi", "cpu": "1"}, {"cpu": "1"}, False),
    ("memory-differs", {"memory": "1Gi", "cpu": "1"}, {"memory": "2Gi", "cpu": "1"}, False),
    ("G-is-not-Gi", {"memory": "1G", "cpu": "1"}, {"memory": "1Gi", "cpu": "1"}, False),
    ("no-memory", {"cpu": "1"}, {"cpu": "1"}, False),
    ("cpu-limit-missing", {"memory": "1Gi", "cpu": "1"}, {"memory": "1Gi"}, False),
    ("cpu-request-missing", {"memory": "1Gi"}, {"memory": "1Gi", "cpu": "1"}, False),
    ("cpu-zero", {"memory": "1Gi", "cpu": "0"}, {"memory": "1Gi", "cpu": "0"}, False),
    ("cpu-differs", {"memory": "1Gi", "cpu": "1"}, {"memory": "1Gi", "cpu": "2"}, False),
    ("cpu-1-vs-1001m", {"memory": "1Gi", "cpu": "1"}, {"memory": "1Gi", "cpu": "1001m"}, False),
]


@pytest.mark.parametrize(
    ("requests", "limits", "expected"), [c[1:] for c in QOS_CASES], ids=[c[0] for c in QOS_CASES]
)
def test_guaranteed_qos(requests: dict[str, Any], limits: dict[str, Any], expected: bool) -> None:
    assert extract_features(vmi(resources(requests, limits))).guaranteed_qos is expected


def test_guaranteed_qos_does_not_need_a_cpu_struct_either_way() -> None:
    domain = {"cpu": {"cores": 4}, **resources({"memory": "2Gi", "cpu": "4"}, {"memory": "2Gi", "cpu": "4"})}
    f = extract_features(vmi(domain))
    assert (f.guaranteed_qos, f.dedicated_cpu, f.vcpus) == (True, False, 4)


# --------------------------------------------------------------------------------------------------
# reservedOverhead, architecture, network bindings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (None, None),
        ({}, None),
        ({"reservedOverhead": None}, None),
        ({"reservedOverhead": {}}, None),
        ({"reservedOverhead": {"addedOverhead": None}}, None),
        ({"reservedOverhead": {"memLock": "Required"}}, None),
        ({"reservedOverhead": {"addedOverhead": "100Mi"}}, 100 * Mi),
        ({"reservedOverhead": {"addedOverhead": "-100Mi"}}, -100 * Mi),
        ({"reservedOverhead": {"addedOverhead": "0.5"}}, Fraction(1, 2)),
        ({"reservedOverhead": {"addedOverhead": "100m"}}, Fraction(1, 10)),
        ({"reservedOverhead": {"addedOverhead": "0"}}, 0),
        ({"reservedOverhead": {"addedOverhead": 1048576}}, Mi),
    ],
)
def test_reserved_overhead(memory: dict[str, Any] | None, expected: Fraction | int | None) -> None:
    got = extract_features(vmi({"memory": memory})).reserved_overhead
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert value(got) == expected


@pytest.mark.parametrize(
    ("spec", "expected"), [({}, ""), ({"architecture": "arm64"}, "arm64"), ({"architecture": None}, "")]
)
def test_architecture(spec: dict[str, Any], expected: str) -> None:
    assert extract_features(vmi({}, **spec)).architecture == expected


@pytest.mark.parametrize(
    ("interfaces", "passt", "names"),
    [
        (None, False, ()),
        ([], False, ()),
        ([{"name": "a", "masquerade": {}}], False, ()),
        ([{"name": "a", "passtBinding": {}}], True, ()),
        ([{"name": "a", "passtBinding": {}}, {"name": "b", "passtBinding": {}}], True, ()),
        ([{"name": "a", "passtBinding": None}], False, ()),
        ([{"name": "a", "binding": {"name": "p1"}}], False, ("p1",)),
        (
            [
                {"name": "a", "binding": {"name": "p1"}},
                {"name": "b", "binding": {"name": "p2"}},
                {"name": "c", "binding": {"name": "p1"}},
            ],
            False,
            ("p1", "p2"),
        ),
        (
            [{"name": "b", "binding": {"name": "p2"}}, {"name": "a", "binding": {"name": "p1"}}],
            False,
            ("p2", "p1"),
        ),
        ([{"name": "a", "binding": None}], False, ()),
        ([{"name": "a", "binding": {}}], False, ("",)),
        ([{"name": "a", "passtBinding": {}}, {"name": "b", "binding": {"name": "p1"}}], True, ("p1",)),
    ],
)
def test_network_bindings(interfaces: list[Any] | None, passt: bool, names: tuple[str, ...]) -> None:
    f = extract_features(vmi(devices(interfaces=interfaces)))
    assert (f.passt, f.binding_names) == (passt, names)


def test_everything_at_once() -> None:
    domain = {
        "cpu": {"cores": 2, "sockets": 2, "dedicatedCpuPlacement": True},
        "memory": {"guest": "4Gi", "reservedOverhead": {"addedOverhead": "1Mi"}},
        "launchSecurity": {"snp": {}},
        **resources({"memory": "4Gi", "cpu": "4"}, {"memory": "4Gi", "cpu": "4"}),
        "devices": {
            "autoattachGraphicsDevice": False,
            "gpus": [{"name": "g"}],
            "tpm": {},
            "interfaces": [{"name": "a", "passtBinding": {}}, {"name": "b", "binding": {"name": "p"}}],
        },
    }
    f = extract_features(
        vmi(
            domain,
            architecture="s390x",
            volumes=[{"name": "m", "downwardMetrics": {}}],
            livenessProbe=EXEC,
            readinessProbe=HTTP,
        )
    )
    assert isinstance(f, VmiFeatures)
    assert (f.vcpus, f.graphics, f.vfio, f.downward_metrics_volume) == (4, False, True, True)
    assert (f.liveness_exec, f.readiness_exec, f.sev, f.tpm) == (True, False, True, True)
    assert (f.dedicated_cpu, f.guaranteed_qos, f.architecture) == (True, True, "s390x")
    assert (f.passt, f.binding_names) == (True, ("p",))
    assert value(f.memory_request) == value(f.guest_memory) == 4 * Gi
    assert f.reserved_overhead is not None and value(f.reserved_overhead) == Mi
    assert f.flags == {
        "graphics": False,
        "vfio": True,
        "downwardMetricsVolume": True,
        "execProbe": True,
        "sev": True,
        "tpm": True,
        "dedicatedCpu": True,
        "guaranteedQos": True,
        "dedicatedCpuOrGuaranteedQos": True,
        "reservedOverhead": True,
        "passt": True,
    }
    # The flags follow the fields of a copy, as headroom and memlock make them.
    copy = dataclasses.replace(f, passt=False, reserved_overhead=None, dedicated_cpu=False)
    assert copy.flags == {**f.flags, "passt": False, "reservedOverhead": False, "dedicatedCpu": False}


def test_ignores_fields_it_does_not_read() -> None:
    body = vmi(
        {"firmware": {"bootloader": {"efi": {}}}, "ioThreadsPolicy": "auto", "features": {"acpi": {}}},
        terminationGracePeriodSeconds=0,
        networks=[{"name": "default", "pod": {}}],
    )
    body["metadata"] = {"name": "x", "labels": {"a": "b"}}
    body["status"] = {"phase": "Running"}
    f = extract_features(body)
    assert (f.vcpus, f.graphics, f.vfio) == (1, True, False)


def test_empty_and_null_parts() -> None:
    bodies: tuple[dict[str, Any], ...] = (
        {},
        {"spec": None},
        {"spec": {}},
        {"spec": {"domain": None}},
        vmi({"devices": None, "resources": None}),
    )
    for body in bodies:
        f = extract_features(body)
        assert (f.vcpus, f.graphics, f.memory_request.is_zero(), f.reserved_overhead) == (1, True, True, None)


# --------------------------------------------------------------------------------------------------
# Validation: the error names the JSON path Go's decoder would complain about
# --------------------------------------------------------------------------------------------------

ERROR_CASES = [
    # the VMI and its containers must be objects
    ([], "vmi"),
    ("vmi", "vmi"),
    (5, "vmi"),
    ({"spec": []}, "vmi.spec"),
    ({"spec": {"domain": "x"}}, "vmi.spec.domain"),
    (vmi({"cpu": "4"}), "vmi.spec.domain.cpu"),
    (vmi({"cpu": []}), "vmi.spec.domain.cpu"),
    (vmi({"resources": "x"}), "vmi.spec.domain.resources"),
    (vmi({"resources": {"requests": []}}), "vmi.spec.domain.resources.requests"),
    (vmi({"resources": {"limits": "x"}}), "vmi.spec.domain.resources.limits"),
    (vmi({"devices": []}), "vmi.spec.domain.devices"),
    (vmi({"memory": "1Gi"}), "vmi.spec.domain.memory"),
    (vmi({"launchSecurity": []}), "vmi.spec.domain.launchSecurity"),
    # uint32 topology: wrong type, negative, too large, booleans, non-integers
    (vmi({"cpu": {"cores": -1}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"cores": 4294967296}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"cores": "4"}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"cores": True}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"cores": Decimal("2.0")}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"cores": 2.0}}), "vmi.spec.domain.cpu.cores"),
    (vmi({"cpu": {"sockets": -1}}), "vmi.spec.domain.cpu.sockets"),
    (vmi({"cpu": {"sockets": 2**40}}), "vmi.spec.domain.cpu.sockets"),
    (vmi({"cpu": {"threads": -2}}), "vmi.spec.domain.cpu.threads"),
    (vmi({"cpu": {"threads": [1]}}), "vmi.spec.domain.cpu.threads"),
    (vmi({"cpu": {"cores": 2, "sockets": 1, "threads": "2"}}), "vmi.spec.domain.cpu.threads"),
    # booleans given as numbers or strings
    (vmi({"cpu": {"dedicatedCpuPlacement": 1}}), "vmi.spec.domain.cpu.dedicatedCpuPlacement"),
    (vmi({"cpu": {"dedicatedCpuPlacement": "true"}}), "vmi.spec.domain.cpu.dedicatedCpuPlacement"),
    (vmi(devices(autoattachGraphicsDevice=0)), "vmi.spec.domain.devices.autoattachGraphicsDevice"),
    (vmi(devices(autoattachGraphicsDevice="false")), "vmi.spec.domain.devices.autoattachGraphicsDevice"),
    (vmi(devices(tpm={"enabled": 0})), "vmi.spec.domain.devices.tpm.enabled"),
    (vmi(devices(tpm={"enabled": "false"})), "vmi.spec.domain.devices.tpm.enabled"),
    # lists and list elements
    (vmi(devices(hostDevices={})), "vmi.spec.domain.devices.hostDevices"),
    (vmi(devices(hostDevices=[1])), "vmi.spec.domain.devices.hostDevices[0]"),
    (vmi(devices(gpus="nvidia")), "vmi.spec.domain.devices.gpus"),
    (vmi(devices(gpus=[{}, "x"])), "vmi.spec.domain.devices.gpus[1]"),
    (vmi(devices(interfaces={"name": "a"})), "vmi.spec.domain.devices.interfaces"),
    (vmi(devices(interfaces=[{}, "x"])), "vmi.spec.domain.devices.interfaces[1]"),
    (
        vmi(devices(interfaces=[{"name": "a"}, {"name": "b", "sriov": True}])),
        "vmi.spec.domain.devices.interfaces[1].sriov",
    ),
    (
        vmi(devices(interfaces=[{"name": "a", "passtBinding": 1}])),
        "vmi.spec.domain.devices.interfaces[0].passtBinding",
    ),
    (
        vmi(devices(interfaces=[{"name": "a", "binding": "p1"}])),
        "vmi.spec.domain.devices.interfaces[0].binding",
    ),
    (
        vmi(devices(interfaces=[{"name": "a", "binding": {"name": 5}}])),
        "vmi.spec.domain.devices.interfaces[0].binding.name",
    ),
    (vmi(devices(tpm=True)), "vmi.spec.domain.devices.tpm"),
    (vmi({"launchSecurity": {"sev": True}}), "vmi.spec.domain.launchSecurity.sev"),
    (vmi({"launchSecurity": {"snp": 1}}), "vmi.spec.domain.launchSecurity.snp"),
    (vmi({"memory": {"reservedOverhead": 5}}), "vmi.spec.domain.memory.reservedOverhead"),
    (vmi({}, volumes={}), "vmi.spec.volumes"),
    (vmi({}, volumes=["x"]), "vmi.spec.volumes[0]"),
    (
        vmi({}, volumes=[{"name": "a"}, {"name": "m", "downwardMetrics": True}]),
        "vmi.spec.volumes[1].downwardMetrics",
    ),
    (vmi({}, livenessProbe="exec"), "vmi.spec.livenessProbe"),
    (vmi({}, readinessProbe={"exec": "ls"}), "vmi.spec.readinessProbe.exec"),
    (vmi({}, architecture=5), "vmi.spec.architecture"),
]


@pytest.mark.parametrize(("body", "path"), ERROR_CASES)
def test_validation_error_path(body: Any, path: str) -> None:
    with pytest.raises(InputError) as raised:
        extract_features(body)
    assert raised.value.path == path
    assert str(raised.value).startswith(path + ": ")


QUANTITY_ERROR_CASES = [
    (vmi(resources(requests={"memory": "abc"})), "vmi.spec.domain.resources.requests.memory"),
    (vmi(resources(requests={"memory": "1Gb"})), "vmi.spec.domain.resources.requests.memory"),
    (vmi(resources(requests={"memory": True})), "vmi.spec.domain.resources.requests.memory"),
    (vmi(resources(requests={"memory": []})), "vmi.spec.domain.resources.requests.memory"),
    (vmi(resources(limits={"memory": "1 Gi"})), "vmi.spec.domain.resources.limits.memory"),
    (vmi(resources(requests={"cpu": "1x"})), "vmi.spec.domain.resources.requests.cpu"),
    (vmi(resources(limits={"cpu": {}})), "vmi.spec.domain.resources.limits.cpu"),
    # a bad quantity is an error even where the cpu struct makes Go ignore the value
    (vmi({"cpu": {"cores": 2}, **resources(limits={"cpu": "four"})}), "vmi.spec.domain.resources.limits.cpu"),
    (vmi({"memory": {"guest": "lots"}}), "vmi.spec.domain.memory.guest"),
    (
        vmi({"memory": {"reservedOverhead": {"addedOverhead": "1Gb"}}}),
        "vmi.spec.domain.memory.reservedOverhead.addedOverhead",
    ),
]


@pytest.mark.parametrize(("body", "path"), QUANTITY_ERROR_CASES)
def test_bad_quantity_path(body: Any, path: str) -> None:
    with pytest.raises(InvalidQuantity) as raised:
        extract_features(body)
    assert raised.value.path == path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 0), ("1Gi", Gi), (1073741824, Gi), (" 2Gi\n", 2 * Gi)],
)
def test_read_quantity(raw: Any, expected: int) -> None:
    assert value(read_quantity(raw, "x")) == expected


def test_read_quantity_error_path() -> None:
    with pytest.raises(InvalidQuantity) as raised:
        read_quantity("1Gb", "a.b[2].c")
    assert raised.value.path == "a.b[2].c"
