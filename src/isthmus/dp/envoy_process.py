"""Run and supervise one Envoy process for a data-plane proxy.

Life cycle: :meth:`EnvoyProcess.start` writes the bootstrap to the work dir, starts Envoy and returns once the
admin API answers. A background supervisor restarts Envoy with capped exponential back-off when it dies
unexpectedly. :meth:`EnvoyProcess.stop` drains inbound listeners through the admin API, waits up to the drain
time, then sends SIGTERM, and SIGKILL after ``stop_timeout``.

Several proxies on one host: every Envoy runs with ``--disable-hot-restart`` (no shared-memory segment and no
base-id clash) and learns its admin address from ``--admin-address-path``, so admin port 0 works too. Envoy
gets its own session, so a terminal's Ctrl-C reaches the agent (which drains) and not Envoy directly; on Linux
it is also killed if the agent dies without stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from isthmus.dp.envoy_binary import find_envoy_binary

log = logging.getLogger(__name__)

ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
_SHM_PREFIX = "/dev/shm/envoy_shared_memory_"
_POLL_INTERVAL = 0.05


class EnvoyError(RuntimeError):
    """Envoy could not be started or kept running; the message is one readable line."""


class EnvoyStartError(EnvoyError):
    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class EnvoyOptions:
    work_dir: Path
    binary: Path | None = None  # default: find_envoy_binary()
    drain_time: float = 2.0
    log_level: str = "info"
    concurrency: int = 1
    ready_timeout: float = 15.0  # start -> admin API answers
    stop_timeout: float = 5.0  # SIGTERM -> SIGKILL
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    healthy_after: float = 30.0  # an Envoy that ran this long resets the back-off
    max_consecutive_failures: int | None = 10  # None: restart forever
    passthrough_logs: bool = False  # also copy Envoy's output to our stderr
    user: int | None = None  # run Envoy as this uid (a transparent proxy's); the work dir becomes its own
    group: int | None = None

    def __post_init__(self) -> None:
        if self.log_level not in ENVOY_LOG_LEVELS:
            raise ValueError(f"log level {self.log_level!r} is not one of {', '.join(ENVOY_LOG_LEVELS)}")
        if self.drain_time < 0:
            raise ValueError(f"drain time must be >= 0, got {self.drain_time}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def _parent_death_hook() -> Callable[[], None] | None:
    """Linux: a pre-exec hook making the kernel SIGKILL Envoy when the agent dies without stopping it."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the agent died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _shm_files(pid: int) -> set[Path]:
    """Envoy hot-restart shared-memory files the process maps (none with --disable-hot-restart)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {Path(line.split()[-1]) for line in maps.splitlines() if _SHM_PREFIX in line}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _summarise_log(text: str) -> str:
    """The most telling line of a failed Envoy's output: its final plain error line or last critical log."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith("["):
            return line
    for line in reversed(lines):
        if "[critical]" in line or "[error]" in line:
            return line.rsplit("] ", 1)[-1]
    return lines[-1] if lines else "no output"


class EnvoyProcess:
    """One supervised Envoy. Use ``async with EnvoyProcess(...)`` or call start()/stop() yourself."""

    def __init__(self, bootstrap: Mapping[str, Any], options: EnvoyOptions) -> None:
        self._bootstrap = dict(bootstrap)
        self._options = options
        self._binary: Path | None = options.binary
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self._pump: asyncio.Task[None] | None = None
        self._admin_url: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = False
        self._started = False
        self._stopping = False
        self._started_at = 0.0
        self._restarts = 0
        self._shm: set[Path] = set()
        self._done = asyncio.Event()
        self._skip_drain = asyncio.Event()
        self._error: EnvoyError | None = None

    # -- public state -------------------------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        return self._options.work_dir

    @property
    def bootstrap_path(self) -> Path:
        return self._options.work_dir / "bootstrap.json"

    @property
    def log_path(self) -> Path:
        return self._options.work_dir / "envoy.log"

    @property
    def admin_address_path(self) -> Path:
        return self._options.work_dir / "admin-address.txt"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the running Envoy's admin API."""
        if self._admin_url is None:
            raise EnvoyError("Envoy is not running")
        return self._admin_url

    @property
    def is_ready(self) -> bool:
        """The current Envoy process answered on its admin API and is still running."""
        return self._ready and self.pid is not None

    @property
    def restarts(self) -> int:
        return self._restarts

    # -- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start Envoy and return once its admin API answers; raise :class:`EnvoyStartError` otherwise."""
        if self._started:
            raise EnvoyError("EnvoyProcess can be started only once")
        self._started = True
        try:
            if self._binary is None:
                self._binary = find_envoy_binary()
            try:
                self._options.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                # The bootstrap holds the data-plane token: readable by the owner only, from the start.
                self.bootstrap_path.unlink(missing_ok=True)
                fd = os.open(self.bootstrap_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(json.dumps(self._bootstrap, indent=2) + "\n")
                if self._options.user is not None:  # Envoy reads its bootstrap, writes its admin address
                    for path in (self._options.work_dir, self.bootstrap_path):
                        os.chown(path, self._options.user, self._options.group or -1)
                self._log_file = self.log_path.open("ab")
            except OSError as exc:
                raise EnvoyStartError(f"cannot prepare work dir {self.work_dir}: {exc}") from None
            self._client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(2.0))
            await self._launch()
        except BaseException as exc:
            self._stopping = True
            self._error = exc if isinstance(exc, EnvoyError) else EnvoyError(f"Envoy did not start: {exc}")
            await self._release()
            self._done.set()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"envoy-supervisor-{self.work_dir}")

    async def wait(self) -> None:
        """Return when stopped; raise :class:`EnvoyError` if the supervisor gave up restarting Envoy."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    def skip_drain(self) -> None:
        """Make a running or upcoming stop() skip (the rest of) the drain wait."""
        self._skip_drain.set()

    async def stop(self) -> None:
        """Drain, then SIGTERM, then SIGKILL after ``stop_timeout``. Idempotent."""
        if self._stopping:
            await self._done.wait()
            return
        self._stopping = True
        try:
            if self._supervisor is not None:
                self._supervisor.cancel()
                await asyncio.wait([self._supervisor])
            proc = self._proc
            if proc is not None and proc.returncode is None:
                await self._drain(proc)
                await self._terminate(proc)
        finally:
            await self._release()
            self._done.set()

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- internals ----------------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        opts = self._options
        assert self._binary is not None
        return [
            str(self._binary),
            "--config-path", str(self.bootstrap_path),
            "--admin-address-path", str(self.admin_address_path),
            "--disable-hot-restart",
            "--concurrency", str(opts.concurrency),
            "--drain-time-s", str(max(1, round(opts.drain_time))),
            "--drain-strategy", "immediate",
            "--log-level", opts.log_level,
        ]  # fmt: skip

    def _identity(self) -> dict[str, Any]:
        opts = self._options
        if opts.user is None:
            return {}
        return {"user": opts.user, "group": opts.group, "extra_groups": []}

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.admin_address_path.unlink(missing_ok=True)
        self._admin_url = None
        self._ready = False
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        self._log_offset = self._log_file.tell()
        out: int | IO[bytes] = asyncio.subprocess.PIPE if self._options.passthrough_logs else self._log_file
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
                preexec_fn=_parent_death_hook(),  # runs after the switch of user, which would clear it
                **self._identity(),
            )
        except OSError as exc:
            raise EnvoyStartError(f"cannot run Envoy {self._binary}: {exc.strerror or exc}") from None
        self._proc = proc
        self._started_at = asyncio.get_running_loop().time()
        if proc.stdout is not None:
            self._pump = asyncio.create_task(self._copy_output(proc.stdout), name=f"envoy-log-{proc.pid}")
        log.info("started Envoy (pid %d), log %s", proc.pid, self.log_path)
        return proc

    async def _copy_output(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if self._log_file is not None:
                self._log_file.write(chunk)
                self._log_file.flush()
            err = getattr(sys.stderr, "buffer", None)
            if err is not None:
                err.write(chunk)
                err.flush()
            else:
                sys.stderr.write(chunk.decode(errors="replace"))

    async def _launch(self) -> None:
        proc = await self._spawn()
        try:
            async with asyncio.timeout(self._options.ready_timeout):
                self._admin_url = await self._wait_admin(proc)
        except TimeoutError:
            await self._terminate(proc, term_timeout=1.0)
            raise EnvoyStartError(
                f"Envoy admin API did not answer within {self._options.ready_timeout:g}s (log: {self.log_path})"
            ) from None
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            raise
        self._shm |= _shm_files(proc.pid)
        self._ready = True
        log.info("Envoy (pid %d) admin API ready at %s", proc.pid, self._admin_url)

    async def _wait_admin(self, proc: asyncio.subprocess.Process) -> str:
        assert self._client is not None
        while True:
            if proc.returncode is not None:
                await self._finish_output()
                raise EnvoyStartError(
                    f"Envoy exited while starting ({describe_exit(proc.returncode)}): {self._log_tail()}",
                    exit_code=proc.returncode,
                )
            with contextlib.suppress(OSError):
                address = self.admin_address_path.read_text().strip()
                if address:
                    url = f"http://{address}"
                    with contextlib.suppress(httpx.HTTPError):
                        response = await self._client.get(f"{url}/server_info")
                        if response.status_code == 200:
                            return url
            await asyncio.sleep(_POLL_INTERVAL)

    async def _finish_output(self) -> None:
        if self._pump is not None:
            await asyncio.wait([self._pump], timeout=1.0)
            self._pump = None

    def _log_tail(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(self._log_offset, f.seek(0, os.SEEK_END) - 16384))
                return _summarise_log(f.read().decode(errors="replace"))
        except OSError:
            return "no output"

    async def _supervise(self) -> None:
        try:
            await self._restart_forever()
        except Exception as exc:  # CancelledError (stop()) passes through
            self._error = (
                exc if isinstance(exc, EnvoyError) else EnvoyError(f"Envoy supervisor failed: {exc!r}")
            )
            log.error("%s", self._error)
            await self._release()
            self._done.set()

    async def _restart_forever(self) -> None:
        opts = self._options
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            self._ready = False
            await self._finish_output()
            self._cleanup_shm()
            if loop.time() - self._started_at >= opts.healthy_after:
                failures = 0
            detail = f"{describe_exit(code)}: {self._log_tail()}" if code > 0 else describe_exit(code)
            log.warning("Envoy (pid %d) exited unexpectedly (%s)", proc.pid, detail)
            while True:
                failures += 1
                if opts.max_consecutive_failures is not None and failures > opts.max_consecutive_failures:
                    raise EnvoyError(
                        f"Envoy failed {failures - 1} times in a row; giving up (log: {self.log_path})"
                    )
                delay = min(opts.backoff_initial * 2 ** (failures - 1), opts.backoff_max)
                log.info("restarting Envoy in %.1fs (attempt %d)", delay, failures)
                await asyncio.sleep(delay)
                try:
                    await self._launch()
                except EnvoyStartError as exc:
                    log.warning("%s", exc)
                    continue
                self._restarts += 1
                break

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        if self._admin_url is None or self._client is None or self._options.drain_time <= 0:
            return
        try:
            listeners = await self._client.get(f"{self._admin_url}/listeners", params={"format": "json"})
            has_listeners = bool(listeners.json().get("listener_statuses"))
            response = await self._client.post(f"{self._admin_url}/drain_listeners?inboundonly&graceful")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.debug("drain request failed: %s", exc)
            return
        if response.status_code != 200 or not has_listeners:
            return
        log.info("draining inbound listeners for up to %gs", self._options.drain_time)
        waiters = {asyncio.ensure_future(proc.wait()), asyncio.ensure_future(self._skip_drain.wait())}
        try:
            await asyncio.wait(waiters, timeout=self._options.drain_time, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _terminate(self, proc: asyncio.subprocess.Process, term_timeout: float | None = None) -> None:
        timeout = self._options.stop_timeout if term_timeout is None else term_timeout
        try:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(timeout):
                        await proc.wait()
                except TimeoutError:
                    log.warning("Envoy (pid %d) ignored SIGTERM for %gs; killing it", proc.pid, timeout)
                    proc.kill()
                    await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled while waiting: never leave Envoy behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._ready = False

    def _cleanup_shm(self) -> None:
        for path in self._shm:
            with contextlib.suppress(OSError):
                path.unlink()
                log.debug("removed %s", path)
        self._shm.clear()

    async def _release(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self._finish_output()
        self._cleanup_shm()
        self._ready = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
