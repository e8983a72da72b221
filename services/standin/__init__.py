"""``vor svor-server``: an SVOR-compatible stand-in for tests, benchmarks and integrators.

Not product code: nothing in ``api/``, ``workers/`` or the rest of ``services/``
imports it (an import-linter contract says so).
"""
