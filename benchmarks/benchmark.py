"""Benchmark of the installed connector against the local Heap stand-in, side by side with its baselines.

Everything runs as it would in production: the connector is the installed console script
(`destination-heap-analytics write`), fed Airbyte messages on stdin from a file, and the Heap stand-in is a
separate process on 127.0.0.1. Nothing is sent anywhere but 127.0.0.1.

What is measured (one run, one table, also written to benchmarks/results.md):
1. records/s and peak RSS for each api_type x mode (bulk / single) x server latency (0 / 20 ms);
2. start-up (a `write` with empty stdin) and the steady-state rate records / (wall - start-up);
3. the anchor: the 0.1.0 pattern, one fresh `requests.post` per row (no Session, no concurrency);
4. parse-only floors: the connector's own stdin reader and plain `orjson.loads` over the same file;
5. bulk track against a rate-limited stand-in (15,000 events/min) with the connector's pacer on;
6. peak RSS for a 1,000,000-record add_user_properties bulk load.

Peak RSS is the connector's own ru_maxrss, read with os.wait4 by a tiny launcher process (see LAUNCHER) so
neither the stand-in nor this process's own memory counts; with the connector's mapping workers, that is the
largest process's, so the launcher also samples RSS and PSS of the connector's processes together.
Nothing here asserts a timing: targets are printed with ok/MISS. The 200,000-record bulk loads run 5 times
(--bulk-repeats); at 0 ms they run in rounds, each round timing the parse floor and then each load once, so
that the shared machine's drift falls on the floor and on every variant alike. Other connector loads run
once (--repeats N: median of N for all); the cheap measurements (anchor, mapping floors) take the median of
--small-repeats (3), start-up of --startup-repeats (5).

The connector measured is the build the container image ships, with the mapping compiled by mypyc
(.venv-compiled, --venv); the 0 ms bulk loads and the mapping floors also run on the pure-Python install
(.venv, --pure-venv), side by side.

    bash scripts/benchmark.sh            # sets up both venvs; full run (10-15 minutes on 2 cores)
    bash scripts/benchmark.sh --quick    # smoke run, small counts (< 2 minutes)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "sample_files" / "configured_catalog.json"
APP_ID = "11"
STREAM = "users"
STATE_EVERY = 1000
LOOPBACK = "127.0.0.1"

# The sample configs' column mappings (sample_files/config_*.json).
API_COLUMNS: dict[str, dict[str, str]] = {
    "track": {
        "api_type": "track",
        "property_columns": "blocked,created_at,name",
        "event_column": "identities.connection",
        "identity_column": "email",
        "timestamp_column": "updated_at",
    },
    "add_user_properties": {
        "api_type": "add_user_properties",
        "property_columns": "identities.provider,created_at,nickname",
        "identity_column": "user_id",
    },
    "add_account_properties": {
        "api_type": "add_account_properties",
        "property_columns": "family_name,email_verified,blocked",
        "account_id_column": "identities.user_id",
    },
}
API_TYPES = tuple(API_COLUMNS)
STORED_COUNTER = {
    "track": "events_stored",
    "add_user_properties": "users_stored",
    "add_account_properties": "accounts_stored",
}
WORKER_SWITCH = "DESTINATION_HEAP_MAPPING_WORKER"  # intake.WORKER_SWITCH: this script imports no connector code
WORKERS_OFF = "mapping workers off"
PURE_PYTHON = "pure Python, mapping not compiled"
PACED_RATE = 15_000  # events a minute, Heap's published bulk-track limit per app_id

# Targets the project quotes. Printed next to the measured figure, never asserted.
TARGET_BULK_RATE = 50_000
TARGET_BULK_VS_ANCHOR = 1000
TARGET_FLOOR_FACTOR = 3.0
TARGET_PACED_SHARE = 0.95
TARGET_SINGLE_VS_ANCHOR = 20
TARGET_MILLION_RSS_MB = 150


# ----------------------------------------------------------------------------------------------------------
# Input: realistic user records (like sample_files/messages.jsonl), a STATE every 1,000 records


FIRST_NAMES = (
    "Jamie", "Alex", "Sam", "Robin", "Kim", "Taylor", "Jordan", "Morgan", "Casey", "Riley", "Avery", "Quinn",
    "Charlie", "Dana", "Emerson", "Finley", "Harper", "Jesse", "Kai", "Logan", "Noa", "Parker", "Reese", "Sage",
)
LAST_NAMES = (
    "Tillman", "Garcia", "Okafor", "Lindqvist", "Novak", "Nguyen", "Schmidt", "Rossi", "Kowalski", "Tanaka",
    "Haddad", "Moreau", "Silva", "Ivanova", "Murphy", "Jensen", "Costa", "Yilmaz", "Dubois", "Fischer", "Ali",
)
CONNECTIONS = (
    ("Username-Password-Authentication", "auth0", False),
    ("google-oauth2", "google-oauth2", True),
    ("github", "github", True),
    ("Username-Password-Authentication", "auth0", False),
)
TAG_SETS = ([], ["beta"], ["beta", "paid"], ["paid"], [])
BASE_EPOCH = 1_666_325_394  # 2022-10-21T04:09:54Z, as in the sample


def _iso_z(epoch: int, millis: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{millis:03d}Z"


def user_record(i: int) -> dict[str, Any]:
    first = FIRST_NAMES[i % len(FIRST_NAMES)]
    last = LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]
    uid = f"{(0x815FF3C3 + i) & 0xFFFFFFFF:08x}-84fa-4f63-b959-{i:012x}"
    connection, provider, social = CONNECTIONS[i % len(CONNECTIONS)]
    return {
        "blocked": i % 97 == 0,
        "created_at": _iso_z(BASE_EPOCH - (i % 5000) * 3600, i % 1000),
        "email": f"{first.lower()}.{last.lower()}{i}@example.com",
        "email_verified": i % 3 == 0,
        "family_name": last,
        "given_name": first,
        "identities": [{"user_id": uid, "connection": connection, "provider": provider, "isSocial": social}],
        "name": f"{first} {last}",
        "nickname": f"{first.lower()}{i}",
        "picture": "https://example.com/avatar.png",
        "updated_at": _iso_z(BASE_EPOCH + i * 7, (i * 13) % 1000),
        "user_id": f"auth0|{uid}",
        "logins_count": i % 250,
        "tags": TAG_SETS[i % len(TAG_SETS)],
    }


def write_messages(path: Path, records: int) -> None:
    """`records` RECORD messages with a STATE after every 1,000 (and after the last), one JSON per line."""
    emitted = BASE_EPOCH * 1000
    with open(path, "wb") as out:
        chunk: list[bytes] = []
        for i in range(records):
            data = user_record(i)
            message = {"type": "RECORD", "record": {"stream": STREAM, "data": data, "emitted_at": emitted + i}}
            chunk.append(orjson.dumps(message))
            if (i + 1) % STATE_EVERY == 0 or i + 1 == records:
                stream_state = {"updated_at": data["updated_at"], "position": i + 1}
                state = {"stream": {"stream_descriptor": {"name": STREAM}, "stream_state": stream_state}}
                chunk.append(orjson.dumps({"type": "STATE", "state": {"type": "STREAM", **state}}))
            if len(chunk) >= 10_000:
                out.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")


def states_in(records: int) -> int:
    return -(-records // STATE_EVERY)


class InputFiles:
    """One generated stdin file per record count, made once and reused (prefixes of one another)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[int, Path] = {}

    def get(self, records: int) -> Path:
        if records not in self._files:
            path = self.directory / f"messages-{records}.jsonl"
            started = time.perf_counter()
            write_messages(path, records)
            size_mb = path.stat().st_size / 1e6
            log(f"  generated {records:,} records ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s")
            self._files[records] = path
        return self._files[records]


# ----------------------------------------------------------------------------------------------------------
# The Heap stand-in, as a subprocess driven over its control endpoints


class Standin:
    def __init__(self, python: Path, workdir: Path, extra_args: list[str]) -> None:
        self._stderr = open(workdir / f"standin-{len(extra_args)}-{os.getpid()}.err", "wb")  # noqa: SIM115
        # heap_standin is a development package at the repository root, not installed: run it from there.
        command = [str(python), "-m", "heap_standin", "--port", "0", "--summary-only"]
        self.proc = subprocess.Popen(
            command + extra_args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.close()
            raise RuntimeError(f"the Heap stand-in did not start: {line!r}")
        self.url = match.group(1)
        self._session = requests.Session()
        self._session.trust_env = False  # loopback only, never through a proxy

    def stats(self) -> dict[str, Any]:
        return self._session.get(self.url + "/_standin/stats", timeout=10).json()

    def reset(self) -> None:
        self._session.post(self.url + "/_standin/reset", timeout=10).raise_for_status()

    def set_latency(self, ms: float) -> None:
        self._session.post(self.url + "/_standin/latency", json={"ms": ms}, timeout=10).raise_for_status()

    def cpu_seconds(self) -> float:
        """User + system CPU the stand-in has used so far (it competes with the connector for the cores)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


# ----------------------------------------------------------------------------------------------------------
# Running the connector


@dataclass
class RunResult:
    wall: float
    exit_code: int
    peak_rss_mb: float  # the largest of the connector's processes (ru_maxrss)
    peak_rss_sum_mb: float  # its processes together, sampled every 0.1 s, shared pages counted in each
    peak_pss_sum_mb: float  # the same, shared pages split between the processes that share them
    cpu_seconds: float
    states: int
    stderr_tail: str
    timed_out: bool = False


def connector_config(url: str, api_type: str, bulk: bool = True, **extra: Any) -> dict[str, Any]:
    return {"app_id": APP_ID, "base_url": url, "api": API_COLUMNS[api_type], "bulk": bulk, **extra}


class Connector:
    def __init__(self, venv: Path, workdir: Path) -> None:
        self.executable = venv / "bin" / "destination-heap-analytics"
        self.python = venv / "bin" / "python"
        self.workdir = workdir
        self.env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        self._runs = 0

    def run(
        self,
        config: dict[str, Any],
        stdin_path: Path | None,
        timeout: float,
        poll: Callable[[float], None] | None = None,
        poll_interval: float = 0.1,
        env: dict[str, str] | None = None,
    ) -> RunResult:
        """One `write` through the launcher; its wall time, exit code, peak RSS and CPU, as wait4 saw them."""
        self._runs += 1
        config_path = self.workdir / f"config-{self._runs}.json"
        config_path.write_bytes(orjson.dumps(config))
        out_path = self.workdir / "connector.out"
        err_path = self.workdir / "connector.err"
        result_path = self.workdir / f"result-{self._runs}"
        command = [str(self.executable), "write", "--config", str(config_path), "--catalog", str(CATALOG)]
        launcher = [str(self.python), "-I", "-S", "-c", LAUNCHER, str(result_path), *command]
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
        timed_out = False
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                started = time.perf_counter()
                proc = subprocess.Popen(launcher, stdin=stdin, stdout=out, stderr=err, env=self.env | (env or {}))
                deadline = started + timeout
                while proc.poll() is None:
                    now = time.perf_counter()
                    if now > deadline and not timed_out:
                        timed_out = True
                        self._kill_connector(result_path)
                    if poll is not None:
                        poll(now - started)
                    try:
                        proc.wait(timeout=poll_interval if poll is not None else 1.0)
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            if stdin_path:
                stdin.close()
        try:
            wall, exit_code, maxrss_kib, cpu, rss_sum_kib, pss_sum_kib = result_path.read_text().split()
        except (OSError, ValueError):
            wall, exit_code, maxrss_kib, cpu, rss_sum_kib, pss_sum_kib = "nan", str(proc.returncode or -1), *["nan"] * 4
        states = 0
        with open(out_path, "rb") as out:
            for line in out:
                if line.startswith(b'{"type":"STATE"'):
                    states += 1
        stderr_tail = err_path.read_text(errors="replace")[-2000:]
        if int(exit_code) != 0:
            tail = out_path.read_bytes()[-3000:].decode(errors="replace")
            stderr_tail = (stderr_tail + "\n" + tail)[-3000:]
        return RunResult(
            wall=float(wall),
            exit_code=int(exit_code),
            peak_rss_mb=float(maxrss_kib) / 1024,  # KiB on Linux
            peak_rss_sum_mb=float(rss_sum_kib) / 1024,
            peak_pss_sum_mb=float(pss_sum_kib) / 1024,
            cpu_seconds=float(cpu),
            states=states,
            stderr_tail=stderr_tail,
            timed_out=timed_out,
        )

    @staticmethod
    def _kill_connector(result_path: Path) -> None:
        """Past the timeout: kill the connector (our own grandchild, by the pid its launcher wrote)."""
        try:
            os.kill(int(Path(f"{result_path}.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# The connector is started through this small launcher so that its peak RSS is its own: a child's ru_maxrss
# starts from the high-water mark of the process that forked it, and the benchmark process can be large.
# The connector may fork workers, and ru_maxrss is the largest process's, not their sum: the launcher also
# samples the memory of the connector's processes together every 0.1 s (/proc/<pid>/smaps_rollup), as RSS
# (shared pages counted in each process) and PSS (shared pages split between them: the memory really used).
# argv: result path, then the command.
# Writes "<wall s> <exit code> <maxrss KiB> <cpu s> <peak RSS sum KiB> <peak PSS sum KiB>" to the result path.
LAUNCHER = r"""
import glob, os, sys, time
result_path, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
with open(result_path + ".pid", "w") as f:
    f.write(str(pid))

def memory(pid):  # (RSS, PSS) in KiB of pid and its descendants
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        children = []
        for path in glob.glob(f"/proc/{pid}/task/*/children"):
            with open(path) as f:
                children += f.read().split()
    except OSError:  # the process ended meanwhile
        return rss, pss
    for child in children:
        child_rss, child_pss = memory(int(child))
        rss, pss = rss + child_rss, pss + child_pss
    return rss, pss

peak_rss = peak_pss = 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    rss, pss = memory(pid)
    peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
    time.sleep(0.1)
wall = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
with open(result_path, "w") as f:
    f.write(f"{wall} {code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {peak_rss} {peak_pss}")
sys.exit(0 if code == 0 else 1)
"""


# ----------------------------------------------------------------------------------------------------------
# Helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_rate(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def ok(condition: bool) -> str:
    return "ok" if condition else "MISS"


def _package_version() -> str:
    """The commit the connector's source was at (read-only git), and whether it had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "destination_heap_analytics", "setup.py"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (" + uncommitted changes to the package" if dirty else "")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@dataclass
class Row:
    api_type: str
    mode: str
    latency_ms: int
    concurrency: int
    records: int
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # the largest process's
    rss_sum: list[float] = field(default_factory=list)  # the connector's processes together
    pss_sum: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    standin_cpu: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    note: str = ""  # WORKERS_OFF, PURE_PYTHON, or what `extra` changes
    extra: dict[str, Any] = field(default_factory=dict)  # config fields beyond the row's own

    @property
    def wall(self) -> float:
        return median(self.walls)

    @property
    def rate(self) -> float:
        return self.records / self.wall if self.walls else float("nan")

    def steady(self, startup: float) -> float:
        busy = self.wall - startup
        return self.records / busy if self.walls and busy > 0 else float("nan")

    def per_cpu_second(self, startup_cpu: float) -> float:
        """Records per connector CPU-second past start-up: what one uncontended core would give."""
        busy = median(self.cpu) - startup_cpu
        return self.records / busy if self.cpu and busy > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# The benchmark


class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.venv = Path(args.venv).resolve()
        self.python = self.venv / "bin" / "python"
        self.workdir = Path(tempfile.mkdtemp(prefix="heap-bench-"))
        self.files = InputFiles(self.workdir)
        self.connector = Connector(self.venv, self.workdir)
        (self.workdir / "pure").mkdir()
        self.pure_venv = Path(args.pure_venv).resolve()
        self.pure_connector = Connector(self.pure_venv, self.workdir / "pure")
        self.standins: list[Standin] = []
        self.rows: list[Row] = []
        self.startup_walls: list[float] = []
        self.startup_rss: list[float] = []
        self.startup_cpu: list[float] = []
        self.load_before = _loadavg()
        self.package_version = _package_version()
        self.anchor: dict[int, tuple[int, float]] = {}  # latency -> (rows, rows/s)
        self.floors: dict[str, float] = {}
        self.round_floors: list[float] = []  # the reader floor, timed at the start of each steady-state round
        self.map_floors: dict[str, float] = {}
        self.pure_map_floors: dict[str, float] = {}
        self.paced: dict[str, Any] = {}
        self.million: Row | None = None

    # -- sizes --

    def size(self, name: str) -> int:
        return getattr(self.args, name)

    def repeats(self, small: bool, bulk: bool = False) -> int:
        if self.args.repeats is not None:
            return self.args.repeats
        if bulk:  # short loads whose medians the steady-state target is judged on
            return self.args.bulk_repeats
        return self.args.small_repeats if small else 1

    # -- the sections --

    def run(self) -> str:
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
        try:
            standin = Standin(self.python, self.workdir, [])
            self.standins.append(standin)
            self.measure_startup(standin)
            self.measure_anchor(standin)
            self.measure_steady(standin)
            self.measure_throughput(standin)
            self.measure_floors()
            if self.args.million:
                self.measure_million(standin)
            if self.args.paced_seconds > 0:
                self.measure_paced()
            return self.report()
        finally:
            for standin in self.standins:
                standin.close()
            if not self.args.keep_files:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def measure_startup(self, standin: Standin) -> None:
        log("start-up: write with empty stdin")
        config = connector_config(standin.url, "add_user_properties", track_events_per_minute=0)
        for _ in range(self.args.startup_repeats):
            result = self.connector.run(config, None, timeout=120)
            if result.exit_code != 0:
                raise SystemExit(f"the connector failed on empty input:\n{result.stderr_tail}")
            self.startup_walls.append(result.wall)
            self.startup_rss.append(result.peak_rss_mb)
            self.startup_cpu.append(result.cpu_seconds)
        log(f"  median {median(self.startup_walls):.3f} s over {len(self.startup_walls)}")

    @property
    def startup(self) -> float:
        return median(self.startup_walls)

    def measure_anchor(self, standin: Standin) -> None:
        """The 0.1.0 pattern: one fresh requests.post per row, single-item body, no Session, no concurrency."""
        url = standin.url + "/api/add_user_properties"
        for latency, rows in ((0, self.size("anchor_0")), (20, self.size("anchor_20"))):
            path = self.files.get(rows)
            lines = [line for line in path.read_bytes().splitlines() if line.startswith(b'{"type":"RECORD"')]
            standin.set_latency(latency)
            rates = []
            for _ in range(self.repeats(small=True)):
                standin.reset()
                started = time.perf_counter()
                for line in lines:
                    data = orjson.loads(line)["record"]["data"]
                    body = {
                        "app_id": APP_ID,
                        "identity": data["user_id"],
                        "properties": {
                            "identities.provider": data["identities"][0]["provider"],
                            "created_at": data["created_at"],
                            "nickname": data["nickname"],
                        },
                    }
                    response = requests.post(url, json=body, timeout=30)
                    if response.status_code != 200:
                        raise SystemExit(f"anchor: the stand-in answered {response.status_code}: {response.text}")
                elapsed = time.perf_counter() - started
                stored = standin.stats()["users_stored"]
                if stored != rows:
                    raise SystemExit(f"anchor: the stand-in holds {stored} users, expected {rows}")
                rates.append(rows / elapsed)
            self.anchor[latency] = (rows, median(rates))
            log(f"anchor @{latency} ms: {rows} rows, {median(rates):.1f} rows/s")
        standin.set_latency(0)

    def load(
        self, standin: Standin, api_type: str, bulk: bool, latency: int, concurrency: int, records: int,
        repeats: int, note: str = "", **extra: Any,
    ) -> Row:
        row = Row(api_type, "bulk" if bulk else "single", latency, concurrency, records, note=note, extra=extra)
        for _ in range(repeats):
            self.run_into(row, standin)
        self.log_row(row)
        return row

    def run_into(self, row: Row, standin: Standin) -> None:
        """One connector run of the row's load, its figures added to the row's."""
        path = self.files.get(row.records)
        standin.set_latency(row.latency_ms)
        config = connector_config(
            standin.url, row.api_type, row.mode == "bulk", max_concurrent_requests=row.concurrency,
            track_events_per_minute=0, **row.extra,
        )
        standin.reset()
        standin_cpu = standin.cpu_seconds()
        connector = self.pure_connector if row.note == PURE_PYTHON else self.connector
        env = {WORKER_SWITCH: "off"} if row.note == WORKERS_OFF else None
        result = connector.run(config, path, timeout=max(300.0, row.records / 50), env=env)
        stats = standin.stats()
        row.standin_cpu.append(standin.cpu_seconds() - standin_cpu)
        row.walls.append(result.wall)
        row.rss.append(result.peak_rss_mb)
        row.rss_sum.append(result.peak_rss_sum_mb)
        row.pss_sum.append(result.peak_pss_sum_mb)
        row.cpu.append(result.cpu_seconds)
        row.failures.extend(self.check(result, stats, row.api_type, row.records))
        if result.exit_code != 0 or result.timed_out:
            log(result.stderr_tail)

    @staticmethod
    def log_row(row: Row) -> None:
        status = "FAIL " + "; ".join(row.failures) if row.failures else "ok"
        walls = ", ".join(f"{wall:.2f}" for wall in row.walls)
        log(
            f"  {row.api_type} {row.mode} {row.latency_ms} ms c={row.concurrency} {row.records:,}"
            f"{' ' + row.note if row.note else ''}: {row.rate:,.0f} rec/s, wall {row.wall:.2f} s ({walls}), "
            f"RSS {median(row.rss):.0f} MB, all processes RSS {median(row.rss_sum):.0f} / "
            f"PSS {median(row.pss_sum):.0f} MB, {status}"
        )

    @staticmethod
    def check(result: RunResult, stats: dict[str, Any], api_type: str, records: int) -> list[str]:
        problems = []
        if result.timed_out:
            problems.append("timed out")
        if result.exit_code != 0:
            problems.append(f"exit {result.exit_code}")
        stored = stats.get(STORED_COUNTER[api_type], 0)
        if stored != records:
            problems.append(f"stand-in holds {stored}, expected {records}")
        if result.states != states_in(records):
            problems.append(f"{result.states} states emitted, expected {states_in(records)}")
        return problems

    def measure_steady(self, standin: Standin) -> None:
        """The 0 ms bulk loads the floor target is judged on, with the parse floor, in rounds: each round times
        the floor and then each load once, so that the shared machine's drift falls on all of them alike. Each
        load also runs with the mapping workers off and on the pure-Python build: what each of them adds."""
        log("steady state: the parse floor and the 0 ms bulk loads, in rounds")
        rows = [
            Row(api_type, "bulk", 0, 8, self.size("bulk_records"), note=note)
            for api_type in API_TYPES
            for note in ("", WORKERS_OFF, PURE_PYTHON)
        ]
        for _ in range(self.repeats(False, True)):
            self.round_floors.append(self.floor_run(self.python, with_mapping=False)["parse"])
            for row in rows:
                self.run_into(row, standin)
        log(f"  parse floor: {', '.join(f'{floor:,.0f}' for floor in self.round_floors)} records/s")
        for row in rows:
            self.log_row(row)
        self.rows.extend(rows)

    def measure_throughput(self, standin: Standin) -> None:
        log("throughput: api_type x mode x latency (bulk at 0 ms: measure_steady)")
        for latency in (0, 20):
            single = self.size("single_0") if latency == 0 else self.size("single_20")
            for api_type in API_TYPES:
                if latency:
                    bulk_load = (api_type, True, latency, 8, self.size("bulk_records"), self.repeats(False, True))
                    self.rows.append(self.load(standin, *bulk_load))
                for concurrency in (8, 32):
                    self.rows.append(
                        self.load(standin, api_type, False, latency, concurrency, single, self.repeats(False))
                    )
            # Single mode sends each batch's items one after another on one worker, so concurrency can only
            # be used with at least that many batches in flight: the same load with batch_size 100.
            self.rows.append(
                self.load(
                    standin, "add_user_properties", False, latency, 32, single, self.repeats(False),
                    note="batch_size 100", batch_size=100,
                )
            )
        standin.set_latency(0)

    def measure_floors(self) -> None:
        """Parse-only floors over the bulk stdin file, in a fresh interpreter like the connector's."""
        log("parse-only floors")
        result = self.floor_run(self.python)
        self.floors = {"reader": median(self.round_floors), "orjson.loads": result["orjson"]}
        self.map_floors = result["map"]
        self.pure_map_floors = self.floor_run(self.pure_venv / "bin" / "python")["map"]
        log(f"  {self.floors} map: {self.map_floors}, pure Python: {self.pure_map_floors}")

    def floor_run(self, python: Path, with_mapping: bool = True) -> dict[str, Any]:
        path = self.files.get(self.size("bulk_records"))
        columns = orjson.dumps(API_COLUMNS if with_mapping else {})
        repeats = self.repeats(True) if with_mapping else 1
        command = [str(python), "-c", FLOOR_CODE, str(path), str(repeats), columns]
        # run in the work directory: from the repo root, `python -c` would import the source tree, not the venv's
        # installed (compiled) package
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=self.workdir)
        if completed.returncode != 0:
            raise SystemExit(f"the parse floor failed:\n{completed.stderr}")
        return orjson.loads(completed.stdout.strip().splitlines()[-1])

    def measure_million(self, standin: Standin) -> None:
        log("peak RSS: add_user_properties bulk at 0 ms, large load")
        self.million = self.load(
            standin, "add_user_properties", True, 0, 8, self.size("million_records"), 1
        )

    def measure_paced(self) -> None:
        """Bulk track with the connector's pacer on, against a stand-in that enforces 15,000 events a minute.

        Feeds rate x duration + 1,000 events, all distinct identities. Sustained rate: events stored between
        the first acknowledged batch (so neither start-up nor the allowed initial burst counts) and the moment
        the stand-in holds rate x duration events. The run then completes and is checked like the others.
        """
        seconds = self.args.paced_seconds
        target = int(PACED_RATE * seconds / 60)
        records = target + 1000
        log(f"paced track: {PACED_RATE:,} events/min for {seconds} s ({records:,} events fed)")
        path = self.files.get(records)
        standin = Standin(
            self.python, self.workdir, ["--track-events-per-minute", str(PACED_RATE), "--enforce-identity-limits"]
        )
        self.standins.append(standin)
        samples: list[tuple[float, int]] = []

        def poll(elapsed: float) -> None:
            samples.append((elapsed, standin.stats()["events_stored"]))

        config = connector_config(standin.url, "track", True, track_events_per_minute=PACED_RATE)
        result = self.connector.run(config, path, timeout=seconds * 3 + 120, poll=poll)
        stats = standin.stats()
        failures = self.check(result, stats, "track", records)
        first = next(((t, n) for t, n in samples if n > 0), None)
        done = next(((t, n) for t, n in samples if n >= target), None)
        sustained = overall = float("nan")
        if first and done and done[0] > first[0]:
            sustained = (done[1] - first[1]) / (done[0] - first[0]) * 60
            overall = done[1] / done[0] * 60
        else:
            failures.append(f"never reached {target} events")
        self.paced = {
            "seconds": seconds,
            "records": records,
            "target": target,
            "sustained": sustained,
            "overall": overall,
            "first": first,
            "done": done,
            "429": stats["by_status"].get("429", 0),
            "requests": stats["requests"],
            "wall": result.wall,
            "rss": result.peak_rss_mb,
            "failures": failures,
        }
        log(f"  sustained {sustained:,.0f}/min, overall {overall:,.0f}/min, 429s {self.paced['429']}, {failures}")
        if failures:
            log(result.stderr_tail)

    # -- the report --

    def report(self) -> str:
        m = machine()
        startup = self.startup
        lines = [
            "# destination-heap-analytics benchmark",
            "",
            f"- Date: {m['date']}",
            f"- Machine: {m['cpu']}, {m['cores']} cores ({m['platform']}); Python {m['python']}",
            f"- Command: `{' '.join(['benchmarks/benchmark.py', *sys.argv[1:]])}`",
            f"- Package: {self.package_version}",
            f"- Connector: the installed `destination-heap-analytics write` of {self.venv.name} (the mapping compiled",
            f"  by mypyc, as in the image; rows marked \"{PURE_PYTHON}\": {self.pure_venv.name}), stdin from a",
            "  generated file (user records of 14 fields like sample_files/messages.jsonl, a STATE every 1,000),",
            "  sample_files column mappings;",
            "  Heap stand-in: `heap_standin --summary-only` in its own process on 127.0.0.1 (it shares the cores).",
            f"- Load average (1/5/15 min) at start: {self.load_before}; at end: {_loadavg()} "
            "(the machine is shared: figures move with it).",
            f"- Start-up (`write` with empty stdin, median of {len(self.startup_walls)}): {startup:.3f} s, "
            f"{median(self.startup_cpu):.2f} CPU s, peak RSS {median(self.startup_rss):.0f} MB. "
            "Steady = records / (wall - start-up).",
            "- Records per CPU-s = records / (connector CPU - start-up CPU): the rate one core of its own would "
            "give, less sensitive to the machine's other load than wall-clock figures.",
            "- Throughput rows: track_events_per_minute 0 (no pacing, stand-in not rate-limited), batch_size 1000.",
            f"- Bulk rows at 0 ms: {len(self.round_floors)} rounds, each timing the parse floor, then each load once "
            "(medians over the rounds).",
            "",
            "## Throughput and memory",
            "",
            "| api_type | mode | latency | concurrency | records | wall s | records/s | steady records/s "
            "| records per CPU-s | connector CPU µs/record (incl. start-up) | stand-in CPU s "
            "| peak RSS MB, largest process | peak RSS MB, all processes | peak PSS MB, all processes | check |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        all_rows = self.rows + ([self.million] if self.million else [])
        for row in all_rows:
            mode = row.mode + (f" ({row.note})" if row.note else "")
            status = "FAIL: " + "; ".join(row.failures) if row.failures else f"ok (x{len(row.walls)})"
            cpu_us = median(row.cpu) / row.records * 1e6
            lines.append(
                f"| {row.api_type} | {mode} | {row.latency_ms} ms | {row.concurrency} | {row.records:,} "
                f"| {row.wall:.2f} | {fmt_rate(row.rate)} | {fmt_rate(row.steady(startup))} "
                f"| {fmt_rate(row.per_cpu_second(median(self.startup_cpu)))} | {cpu_us:.0f} "
                f"| {median(row.standin_cpu):.1f} | {median(row.rss):.0f} | {median(row.rss_sum):.0f} "
                f"| {median(row.pss_sum):.0f} | {status} |"
            )
        anchor_title = "## Anchor: the 0.1.0 pattern (one fresh `requests.post` per row, no Session, no concurrency)"
        lines += ["", anchor_title, ""]
        lines += ["| api_type | latency | rows | rows/s |", "|---|---|---|---|"]
        for latency, (rows, rate) in sorted(self.anchor.items()):
            lines.append(f"| add_user_properties | {latency} ms | {rows:,} | {fmt_rate(rate)} |")

        floor = self.floors.get("reader", float("nan"))
        lines += ["", f"## Parse-only floors ({self.size('bulk_records'):,}-record stdin file, no sending)", ""]
        lines += ["| what | records/s |", "|---|---|"]
        plain = self.floors.get("orjson.loads", float("nan"))
        reader = (
            "connector's stdin reader (`messages.read_blocks`, `split_lines`, `parse_line`), median of "
            f"{len(self.round_floors)}, one at the start of each steady-state round"
        )
        lines.append(f"| {reader} | {fmt_rate(floor)} |")
        lines.append(f"| plain `orjson.loads` per bytes line | {fmt_rate(plain)} |")
        for api_type, rate in self.map_floors.items():
            lines.append(f"| reader + mapping + encoding: the intake's work ({api_type}) | {fmt_rate(rate)} |")
            pure = self.pure_map_floors.get(api_type, float("nan"))
            lines.append(f"| the same, {PURE_PYTHON} ({api_type}) | {fmt_rate(pure)} |")
        lines += ["", "| api_type | 0 ms bulk steady records/s | floor / steady |", "|---|---|---|"]
        for row in self.rows:
            if row.mode == "bulk" and row.latency_ms == 0:
                steady = row.steady(startup)
                label = row.api_type + (f" ({row.note})" if row.note else "")
                lines.append(f"| {label} | {fmt_rate(steady)} | {floor / steady:.2f}x |")

        if self.paced:
            p = self.paced
            status = "FAIL: " + "; ".join(p["failures"]) if p["failures"] else "ok"
            lines += [
                "",
                f"## Paced bulk track: stand-in limited to {PACED_RATE:,} events/min, connector pacing on",
                "",
                f"{p['records']:,} events fed (all distinct identities, stand-in enforcing per-identity limits too); "
                f"measured until the stand-in held {p['target']:,} ({p['seconds']} s worth).",
                "",
                "| sustained events/min (after the first batch) | share of 15,000 | overall incl. start-up and burst "
                "| 429s | requests | wall s | peak RSS MB | check |",
                "|---|---|---|---|---|---|---|---|",
                f"| {fmt_rate(p['sustained'])} | {p['sustained'] / PACED_RATE:.1%} | {fmt_rate(p['overall'])} "
                f"| {p['429']} | {p['requests']} | {p['wall']:.1f} | {p['rss']:.0f} | {status} |",
            ]

        lines += ["", "## Ratios and targets (quoted by the project; printed, never asserted)", ""]
        lines += ["| target | measured | |", "|---|---|---|"]
        lines += self.targets(startup, floor)
        lines.append("")
        return "\n".join(lines)

    def find(self, api_type: str, mode: str, latency: int, concurrency: int) -> Row | None:
        return next(
            (
                r for r in self.rows
                if (r.api_type, r.mode, r.latency_ms, r.concurrency, r.note)
                == (api_type, mode, latency, concurrency, "")
            ),
            None,
        )

    def targets(self, startup: float, floor: float) -> list[str]:
        out = []
        anchor20 = self.anchor.get(20, (0, float("nan")))[1]
        bulk = self.find("add_user_properties", "bulk", 20, 8)
        if bulk:
            failed = " (FAIL)" if bulk.failures else ""
            out.append(
                f"| add_user_properties bulk @20 ms, {bulk.records:,} records >= {TARGET_BULK_RATE:,} records/s "
                f"| {fmt_rate(bulk.rate)}{failed} | {ok(bulk.rate >= TARGET_BULK_RATE and not bulk.failures)} |"
            )
            ratio = bulk.rate / anchor20
            out.append(
                f"| add_user_properties bulk @20 ms >= {TARGET_BULK_VS_ANCHOR}x anchor @20 ms "
                f"| {ratio:,.0f}x ({fmt_rate(bulk.rate)} vs {fmt_rate(anchor20)}) "
                f"| {ok(ratio >= TARGET_BULK_VS_ANCHOR)} |"
            )
        for concurrency, which in ((8, "not the default"), (32, "the single-mode default")):
            single = self.find("add_user_properties", "single", 20, concurrency)
            if single:
                ratio = single.rate / anchor20
                out.append(
                    f"| add_user_properties single @20 ms, concurrency {concurrency} ({which}) "
                    f">= {TARGET_SINGLE_VS_ANCHOR}x "
                    f"anchor @20 ms | {ratio:,.1f}x ({fmt_rate(single.rate)} vs {fmt_rate(anchor20)}) "
                    f"| {ok(ratio >= TARGET_SINGLE_VS_ANCHOR and not single.failures)} |"
                )
        for row in self.rows:
            if row.mode == "bulk" and row.latency_ms == 0 and not row.note:  # as the connector runs by default
                factor = floor / row.steady(startup)
                out.append(
                    f"| {row.api_type} bulk @0 ms steady state within {TARGET_FLOOR_FACTOR:g}x of the parse floor "
                    f"| {factor:.2f}x ({fmt_rate(row.steady(startup))} vs {fmt_rate(floor)}) "
                    f"| {ok(factor <= TARGET_FLOOR_FACTOR)} |"
                )
        if self.paced:
            p = self.paced
            share = p["sustained"] / PACED_RATE
            met = share >= TARGET_PACED_SHARE and p["429"] == 0 and not p["failures"]
            out.append(
                f"| paced track >= {TARGET_PACED_SHARE:.0%} of {PACED_RATE:,}/min with zero 429s "
                f"| {share:.1%}, {p['429']} 429s | {ok(met)} |"
            )
        if self.million:
            pss, rss = median(self.million.pss_sum), median(self.million.rss_sum)
            out.append(
                f"| peak memory < {TARGET_MILLION_RSS_MB} MB at {self.million.records:,} records "
                f"(PSS of the connector's processes together) | {pss:.0f} MB (RSS together: {rss:.0f} MB, "
                f"largest process: {median(self.million.rss):.0f} MB) "
                f"| {ok(pss < TARGET_MILLION_RSS_MB and not self.million.failures)} |"
            )
        return out


# Runs in a fresh interpreter of the connector's venv: argv = path, repeats, api column mappings (JSON).
FLOOR_CODE = r"""
import gc, io, statistics, sys, time
import orjson
from destination_heap_analytics.config import parse_config
from destination_heap_analytics.destination import DestinationHeapAnalytics
from destination_heap_analytics.intake import RecordEncoder
from destination_heap_analytics.mapping import Mapping
from destination_heap_analytics.messages import parse_line, split_lines

path, repeats, columns = sys.argv[1], int(sys.argv[2]), orjson.loads(sys.argv[3])
destination = DestinationHeapAnalytics()
gc.freeze()  # as the connector does before a write

def records_in(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.startswith(b'{"type":"RECORD"'))

def timed(consume):
    runs = []
    for _ in range(repeats):
        with open(path, "rb") as raw:
            stdin = io.TextIOWrapper(raw, encoding="utf-8")  # as the CDK wraps stdin
            started = time.perf_counter()
            consume(stdin)
            runs.append(time.perf_counter() - started)
    return statistics.median(runs)

def reader(stdin):  # the connector's own stdin reader: parse_line over every line
    for block in destination._parse_input_stream(stdin):
        for line in split_lines(block) if block else ():
            parse_line(line)

def plain(stdin):  # the least any reader has to do: split lines, orjson.loads each
    for line in stdin.buffer:
        orjson.loads(line)

count = records_in(path)
result = {"parse": count / timed(reader), "orjson": count / timed(plain), "map": {}}
for api_type, api in columns.items():
    try:
        mapping = Mapping(parse_config({"app_id": "11", "base_url": "http://127.0.0.1:1", "api": api}).mapping)
    except Exception as error:  # the package changed shape: report the floors that still apply
        print(f"map floor for {api_type} skipped: {error!r}", file=sys.stderr)
        continue
    encoder = RecordEncoder(mapping, "users", None)
    def parse_and_map(stdin, encoder=encoder):  # the intake's whole work: read, parse, map, encode
        for block in destination._parse_input_stream(stdin):
            if block:
                encoder.encode(block)
    result["map"][api_type] = count / timed(parse_and_map)
print(orjson.dumps(result).decode())
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv-compiled"), help="venv with the compiled connector")
    parser.add_argument("--pure-venv", default=str(ROOT / ".venv"), help="venv with the pure-Python connector")
    parser.add_argument("--bulk-records", type=int, default=200_000, help="records per bulk load")
    parser.add_argument("--single-0", type=int, default=20_000, help="records per single-mode load at 0 ms")
    # 20,000 at 20 ms: enough that the 1 s start-up, counted in records/s, is a small share of the run
    parser.add_argument("--single-20", type=int, default=20_000, help="records per single-mode load at 20 ms")
    parser.add_argument("--anchor-0", type=int, default=2_000, help="rows the anchor sends at 0 ms")
    parser.add_argument("--anchor-20", type=int, default=300, help="rows the anchor sends at 20 ms")
    parser.add_argument("--million-records", type=int, default=1_000_000, help="records of the peak-RSS load")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True, help="run the RSS load")
    parser.add_argument("--paced-seconds", type=int, default=120, help="duration of the paced track run (0: skip)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of each connector load (default 1)")
    parser.add_argument("--bulk-repeats", type=int, default=5, help="repeats of each 200,000-record bulk load")
    parser.add_argument("--small-repeats", type=int, default=3, help="repeats of the anchor and the floors")
    parser.add_argument("--startup-repeats", type=int, default=5, help="empty writes timed for start-up")
    parser.add_argument("--quick", action="store_true", help="smoke run with small counts (< 2 minutes)")
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results.md)")
    parser.add_argument("--keep-files", action="store_true", help="keep the generated inputs and logs")
    if "--quick" in argv:  # small defaults; counts given explicitly still win
        parser.set_defaults(
            bulk_records=20_000, single_0=2_000, single_20=200, anchor_0=300, anchor_20=50,
            million_records=100_000, paced_seconds=20, small_repeats=1, startup_repeats=3, bulk_repeats=1,
        )
    args = parser.parse_args(argv)
    if args.output is None:
        name = "results-quick.md" if args.quick else "results.md"
        args.output = str(ROOT / "benchmarks" / name)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    report = Benchmark(args).run()
    print(report)
    Path(args.output).write_text(report)
    log(f"written to {args.output} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
