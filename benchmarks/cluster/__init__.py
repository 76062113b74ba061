"""Cluster benchmark: measure virt-launcher pods (and, on mshv, the node) on a real KubeVirt cluster.

Run as a Kubernetes Job (``deploy/benchmark/``) or locally with a kubeconfig token::

    python -m benchmarks.cluster --config shapes.yaml

For each shape of the matrix it creates a VMI that touches its memory, reads the launcher pod's
cgroup memory (kubelet ``/stats/summary`` through the API server's node proxy), the RSS of each
process in the compute container (``ps`` over ``pods/exec``) and, for node scope, the node's
``MemAvailable``, deletes the VMI, and uploads ``pod`` (and ``node``) measurement records to the
overhead service. See docs/cluster-benchmark.md. It has not been run on a real cluster yet.
"""
