"""Calibration: measurement records, fits of new tables from them, activation rules, reports.

Pure domain logic over :mod:`overhead_service.model`; the store keeps what it produces and the web
layer and CLI call it.  Nothing here imports Flask, SQL or HTTP libraries.
"""
