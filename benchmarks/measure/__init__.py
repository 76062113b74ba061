"""Local memory-overhead benchmark: boots real QEMU guests (a tiny multiboot guest that touches a
share of its RAM), measures each QEMU process and its memory cgroup, and uploads scope ``qemu``
measurement records to ``POST /v1/measurements``. Run ``python -m benchmarks.measure --help``.
"""
