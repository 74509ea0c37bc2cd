#!/usr/bin/env python3
"""Runs a command and reports what it cost, for the benchmarks: wall time, CPU (user + system,
from wait4 to the microsecond) and peak resident memory.

The peak comes from GNU time (`/usr/bin/time -f %M`) run between this script and the command: a
child forked from Python inherits Python's ~13 MB high-water mark until it execs, which would set a
false floor under every figure; `time` is small. Its own start-up (~1 ms, ~0.3 ms of CPU) is in
every measured command alike.

Usage: measure.py CMD ARGS...   (`python3` as CMD means this interpreter; stdout of CMD is
discarded, its stderr passed on; the last stderr line is `MEASURE wall_ms cpu_ms maxrss_kib code`)
"""
import os
import subprocess
import sys
import time

argv = sys.argv[1:]
if argv[0] == "python3":
    argv[0] = sys.executable
argv = ["/usr/bin/time", "-f", "PEAK_KIB %M", "--"] + argv
start = time.perf_counter()
child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
err = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
wall = (time.perf_counter() - start) * 1000
lines = err.decode("utf-8", "replace").rstrip("\n").split("\n")
peak = 0
if lines and lines[-1].startswith("PEAK_KIB "):
    peak = int(lines.pop().split()[1])
code = os.waitstatus_to_exitcode(status)
if lines and lines[-1].startswith("Command exited with non-zero status"):
    lines.pop()
sys.stderr.write("\n".join(lines))
sys.stderr.write("\nMEASURE %.3f %.3f %d %d\n" % (wall, (usage.ru_utime + usage.ru_stime) * 1000,
                                                   peak, code))
