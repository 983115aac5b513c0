"""Peak memory of the benchmark process."""

import resource


def peak_rss_mib() -> float:
    """The process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
