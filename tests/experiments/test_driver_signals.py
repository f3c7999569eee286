"""`compactnn reproduce --jobs 2` stopped from outside: SIGTERM writes the report of what
finished and exits 143, and the worker processes never outlive the driver (SIGTERM
or SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A driver with two experiments: one that finishes at once, then one whose two workers
# sleep (for at most two minutes, so a leaked worker still ends by itself).
SCRIPT = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path

    from compactnn.experiments import Experiment, ExperimentResult


    def sleeper(i):
        Path(os.environ["PIDS_DIR"], f"{os.getpid()}").write_text(str(i))
        end = time.monotonic() + 120
        while time.monotonic() < end:
            time.sleep(0.05)
        return i


    def fast(out_dir, quick, seed):
        return ExperimentResult("fast_ok", "the fast table")


    def pooled(out_dir, quick, seed, jobs=1):
        from compactnn.experiments.workers import worker_pool

        with worker_pool(jobs) as p:
            return ExperimentResult("pooled", str(list(p.map(sleeper, range(jobs)))))


    if __name__ == "__main__":
        from compactnn.cli_errors import run_guarded
        from compactnn.experiments.driver import reproduce

        chosen = [Experiment("fast_ok", "finishes at once", fast),
                  Experiment("pooled", "two sleeping workers", pooled, parallel=True)]
        sys.exit(run_guarded(lambda: reproduce(chosen, Path(sys.argv[1]), True, 0, jobs=2,
                                               echo=lambda _line: None).exit_code, False))
''')


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(cond, what: str, limit_s: float = 120.0) -> None:
    end = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def driver(tmp_path):
    """Start the driver; yield (process, its run folder, the workers' pids once both
    are running); kill whatever is left of it afterwards."""
    script = tmp_path / "drive.py"
    script.write_text(SCRIPT)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    out = tmp_path / "run"
    env = {**os.environ, "PIDS_DIR": str(pids_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        def both_started():
            assert proc.poll() is None, proc.stdout.read().decode()
            return len(list(pids_dir.iterdir())) == 2

        wait_for(both_started, "both workers to start")
        workers += [int(p.name) for p in pids_dir.iterdir()]
        yield proc, out, workers
    finally:
        for pid in [proc.pid, *workers]:  # only what this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()


def test_sigterm_writes_the_report_of_what_finished_and_exits_143(driver):
    proc, out, workers = driver
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    report = (out / "report.md").read_text()
    assert "| fast_ok | ok |" in report and "the fast table" in report
    assert "Interrupted while running pooled; the rows above finished." in report
    for pid in workers:
        wait_for(lambda pid=pid: not alive(pid), f"worker {pid} to end")


def test_workers_die_with_a_driver_killed_by_sigkill(driver):
    proc, out, workers = driver
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    for pid in workers:  # nothing told them: the kernel (or their watchdog) ends them
        wait_for(lambda pid=pid: not alive(pid), f"worker {pid} to end")


def test_a_worker_whose_parent_is_already_gone_exits(tmp_path):

    code = ("import sys; from compactnn.experiments.workers import die_with_parent; "
            "die_with_parent(int(sys.argv[1])); print('still here')")
    got = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 1 and "still here" not in got.stdout
