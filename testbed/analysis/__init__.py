"""Offline reading of runs and bundles: report, statistics, calibration, replay, plots."""
