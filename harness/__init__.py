"""Process harnesses that this project's tests and benchmarks both run (not shipped).

Tests and benchmarks do not import each other (an import-linter contract); what
both need lives here.
"""
