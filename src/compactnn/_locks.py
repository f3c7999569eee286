"""One exclusive POSIX lock primitive shared by the modules that must keep a second
process away from a file: checkpoint temporaries (:mod:`compactnn.io`), experiment cell
claims (:mod:`compactnn.experiments.cells`), run folders
(:mod:`compactnn.engine.run_folder`), tuning folders (:mod:`compactnn.tune.storage`) and
the data cache (:mod:`compactnn.data.cache_files`)."""

from __future__ import annotations


def hold_exclusive(fd: int, block: bool) -> bool:
    """An exclusive ``flock`` on open file ``fd``, released when ``fd`` is closed (or the
    process ends, however it ends): False when another holds it (with ``block=False``);
    True, doing nothing, without POSIX locks."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows: no locks)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
