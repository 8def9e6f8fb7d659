"""A tiny asv suite that tests/test_report.py runs with asv itself to get real result files."""
