"""Tools the benchmarks share with the tests: hostile HTTP clients and the costliest
request bodies. Benchmarks import no test module; tests may import these."""
