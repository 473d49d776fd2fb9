"""A contract-enforcing stand-in for cloud-hypervisor's HTTP API and event monitor.

No cloud-hypervisor binary can run on the test machines, so the client and the adapter
are tested against this server, which *enforces* the real contract instead of echoing:

* every request body is validated against its schema in cloud-hypervisor-openapi.yaml
  (strictly: unknown fields are refused), and every answer the fake sends is validated
  against the response schema (a violation is recorded in ``violations`` and turned into
  a 500, so tests fail);
* the state rules of ``vmm/src/api/http`` and ``vmm/src/lib.rs``: ``vm.*`` before
  ``vm.create`` → 404 ``VmNotCreated``; ``vm.create`` twice → 500; ``vm.boot`` only from
  Created; pause/resume/power-button only when running/paused; ``vm.add-*`` answers 204
  before boot (cold plug) and 200 + PciDeviceInfo after; body on a body-less action → 400;
  wrong method → 400; unknown endpoint → 404; error bodies are a JSON list of messages;
* file descriptors are received with ``recvmsg``/SCM_RIGHTS on the request's own
  connection, and must arrive with the request's first bytes. cloud-hypervisor only
  uses them on ``vm.add-net`` (and on ``vm.restore``); it silently drops fds sent with
  ``vm.create`` (``VmCreate`` resets net fds) — the fake
  answers 400 to fds on any endpoint other than ``vm.add-net`` so the client can never rely
  on that. With fds, ``num_queues`` must be 2 × fds and every fd must be open (fstat);
* disks are opened at ``vm.boot`` as ``block/src/formats/qcow`` does, for every disk path
  that exists (tests elsewhere use made-up paths): a qcow2 file whose header names a
  backing file is refused unless its DiskConfig has ``backing_files: true`` (off by
  default: "backing files not allowed"); with it, the backing file is opened read-only
  (``O_RDONLY``) and must exist. What was opened, and how, is kept in ``disk_opens``.

Why not an aiohttp web server: aiohttp's transports read with ``recv()``, which discards
SCM_RIGHTS data, so the fake uses the standard library's threaded ``http.server`` with a
reader that calls ``recvmsg``.

Run as a program (``python -m tests.component.cloud_hypervisor.fake_vmm --api-socket
path=… --event-monitor fd=N``) it behaves like the ``cloud-hypervisor`` executable for the
process-level tests: creates the socket, writes pretty-printed events + blank line to fd
N, exits 0 on ``vmm.shutdown``/SIGTERM/guest power-off. ``FAKE_CH_MODE`` selects faults:
``exit-early`` (exit 1 with an stderr line before the socket exists), ``no-socket``,
``stubborn`` (ignores vmm.shutdown and SIGTERM), ``long-serial`` (a 200 kB serial line),
``die-on-boot`` (exit 3 when vm.boot arrives), ``panic`` (guest panic event after
boot), ``ignore-power`` (guest ignores the power button). ``FAKE_CH_RECORD=<file>``
writes the received fds' metadata, the requests and any contract violations as JSON.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import os
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.component.cloud_hypervisor import openapi

API_ROOT = "/api/v1/"
_MAX_FDS = 64

# Actions without a request body (vm_action_put_handler! in http_endpoint.rs).
_BODYLESS_PUT = {
    "vm.boot",
    "vm.delete",
    "vm.shutdown",
    "vm.reboot",
    "vm.pause",
    "vm.resume",
    "vm.power-button",
    "vm.nmi",
    "vmm.shutdown",
}
_GET = {"vmm.ping", "vm.info", "vm.counters"}
_FD_ENDPOINTS = {"vm.add-net"}


@dataclass
class FdInfo:
    """What the fake found behind one received fd."""

    endpoint: str
    device_id: str | None
    kind: str  # "chr", "fifo", "reg", "sock", "other"
    dev: int
    ino: int
    rdev: int
    tap_name: str | None = None


@dataclass
class Answer:
    status: int
    body: Any = None


def _err(status: int, *messages: str) -> Answer:
    return Answer(status, list(messages))


@dataclass
class FakeVmm:
    """The API state machine; thread-safe (the HTTP server runs one thread per connection)."""

    emit: Callable[[str, str, dict[str, str] | None], None] | None = None
    on_exit: Callable[[int], None] | None = None
    guest_obeys_power_button: bool = True
    stubborn: bool = False
    die_on: str | None = None
    panic_after_boot: bool = False
    delay: dict[str, float] = field(default_factory=dict)
    fail_next: dict[str, Answer] = field(default_factory=dict)
    state: str | None = None  # None = no VM created; else the VmState string
    config: dict[str, Any] | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    fds: list[FdInfo] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, endpoint, fds
    violations: list[str] = field(default_factory=list)
    disk_opens: list[tuple[str, str]] = field(default_factory=list)  # path, "rw" / "ro"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_slot: int = 3

    def _event(self, source: str, name: str, props: dict[str, str] | None = None) -> None:
        if self.emit is not None:
            self.emit(source, name, props)

    # --- request entry point ---------------------------------------------------------

    def handle(self, method: str, path: str, raw: bytes, fds: list[int]) -> Answer:
        """Answer one request; ``fds`` were received with it (the fake closes them)."""
        endpoint = path[len(API_ROOT) :] if path.startswith(API_ROOT) else path
        with self._lock:
            self.requests.append((method, endpoint, len(fds)))
            try:
                answer = self._handle(method, endpoint, raw, fds)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            answer = self._check_answer(endpoint, answer)
        if endpoint in self.delay:
            time.sleep(self.delay[endpoint])
        return answer

    def _check_answer(self, endpoint: str, answer: Answer) -> Answer:
        if 200 <= answer.status < 300:
            name = openapi.response_schema(endpoint, answer.status)
            if name is None and answer.body is not None and answer.status != 200:
                problems = [f"{endpoint} {answer.status} must not carry a body"]
            elif name is not None:
                problems = openapi.errors(name, answer.body)
            else:
                problems = []
        else:
            ok = isinstance(answer.body, list) and all(isinstance(m, str) for m in answer.body)
            problems = [] if ok else [f"error body {answer.body!r} is not a list of messages"]
        if problems:
            self.violations.extend(f"answer of {endpoint}: {p}" for p in problems)
            return _err(500, "fake VMM produced an answer outside the spec", *problems)
        return answer

    def _handle(self, method: str, endpoint: str, raw: bytes, fds: list[int]) -> Answer:
        if endpoint not in openapi.endpoints():
            return _err(404, "Not Found")
        if method not in openapi.methods(endpoint):
            return _err(400, "Bad Request")
        if fds and endpoint not in _FD_ENDPOINTS:
            return _err(
                400, f"{len(fds)} fds sent with {endpoint}: cloud-hypervisor ignores them there"
            )
        if endpoint in self.fail_next:
            return self.fail_next.pop(endpoint)
        body: Any = None
        if endpoint in _BODYLESS_PUT or endpoint in _GET:
            if raw.strip():
                return _err(400, "Bad Request")
        else:
            try:
                body = json.loads(raw)
            except ValueError as err:
                return _err(400, "Failed to deserialize JSON", str(err))
            schema = openapi.request_schema(endpoint)
            if schema is not None:
                problems = openapi.errors(schema, body)
                if problems:
                    return _err(400, "Failed to deserialize JSON", *problems)
        if endpoint == self.die_on:
            sys.stderr.write(f"Error booting VM: fake crash on {endpoint}\n")
            sys.stderr.flush()
            os._exit(3)
        handler = getattr(self, "_" + endpoint.replace(".", "_").replace("-", "_"), None)
        if handler is None:
            return _err(500, f"the fake VMM does not implement {endpoint}")
        answer: Answer = handler(body, fds)
        return answer

    # --- vmm.* -----------------------------------------------------------------------

    def _vmm_ping(self, body: Any, fds: list[int]) -> Answer:
        return Answer(
            200,
            {
                "version": "v48.0-fake",
                "build_version": "fake",
                "pid": os.getpid(),
                "features": ["kvm"],
            },
        )

    def _vmm_shutdown(self, body: Any, fds: list[int]) -> Answer:
        if not self.stubborn:
            if self.state in {"Running", "Paused"}:
                self._event("vm", "shutdown")
            self._event("vmm", "shutdown")
            self._exit_soon(0)
        return Answer(200)  # real cloud-hypervisor answers 200 OK here (spec says 204)

    def _exit_soon(self, code: int) -> None:
        if self.on_exit is not None:
            threading.Timer(0.05, self.on_exit, args=(code,)).start()

    # --- vm lifecycle ----------------------------------------------------------------

    def _not_created(self) -> Answer | None:
        if self.state is None:
            return _err(404, "Error from API", "The VM could not be found", "VM is not created")
        return None

    def _vm_create(self, body: Any, fds: list[int]) -> Answer:
        if self.state is not None:
            return _err(500, "Error from API", "The VM could not be created", "VM already created")
        if body.get("net"):
            return _err(400, "the fake refuses net in vm.create: taps go with vm.add-net")
        self.config = body
        self.state = "Created"
        for kind in ("disks", "devices", "vdpa"):
            for dev in body.get(kind, []):
                self.devices[dev.get("id") or f"_{kind}{len(self.devices)}"] = dev
        return Answer(204)

    def _vm_boot(self, body: Any, fds: list[int]) -> Answer:
        if (missing := self._not_created()) is not None:
            return missing
        if self.state != "Created":
            return _err(500, "Error from API", "The VM could not boot", "VM is already booted")
        assert self.config is not None
        for disk in self.config.get("disks", []):
            if (problem := self._open_disk(disk)) is not None:
                return _err(500, "Error from API", "The VM could not boot", problem)
        self._event("vm", "booting")
        self.state = "Running"
        self._event("vm", "booted")
        if self.panic_after_boot:
            self._event("guest", "panic")
        return Answer(204)

    def _open_disk(self, disk: dict[str, Any]) -> str | None:
        """Open one disk as the real VMM does; an error message, or None."""
        path = disk.get("path")
        if not isinstance(path, str) or not os.path.isfile(path):
            return None  # a made-up path of a test that does not look at disks
        readonly = bool(disk.get("readonly", False))
        try:
            fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as err:
            return f"Cannot open disk path {path}: {err}"
        try:
            head = os.pread(fd, 20, 0)
        finally:
            os.close(fd)
        self.disk_opens.append((path, "ro" if readonly else "rw"))
        if disk.get("image_type") != "Qcow2" or head[:4] != b"QFI\xfb":
            return None
        offset = int.from_bytes(head[8:16], "big")
        size = int.from_bytes(head[16:20], "big")
        if not offset:
            return None
        if not disk.get("backing_files", False):
            return f"Failed to open disk {path}: backing files not allowed (backing_files=off)"
        with open(path, "rb") as f:
            f.seek(offset)
            backing = f.read(size).decode()
        try:
            os.close(os.open(backing, os.O_RDONLY))  # parser.rs: OpenOptions::read(true)
        except OSError as err:
            return f"Failed to open backing file {backing}: {err}"
        self.disk_opens.append((backing, "ro"))
        return None

    def _vm_info(self, body: Any, fds: list[int]) -> Answer:
        if (missing := self._not_created()) is not None:
            return missing
        assert self.config is not None
        config = dict(self.config)
        nets = [d for d in self.devices.values() if "mac" in d]
        if nets:
            config["net"] = nets
        return Answer(200, {"config": config, "state": self.state})

    def _vm_counters(self, body: Any, fds: list[int]) -> Answer:
        if (missing := self._not_created()) is not None:
            return missing
        counters = {
            dev_id: {"rx_bytes": 1500, "rx_frames": 1, "tx_bytes": 0, "tx_frames": 0}
            for dev_id, dev in self.devices.items()
            if "mac" in dev
        }
        return Answer(200, counters)

    def _need_running(self, action: str, *states: str) -> Answer | None:
        if (missing := self._not_created()) is not None:
            return missing
        if self.state not in states:
            return _err(500, "Error from API", f"The VM could not {action}", f"VM is {self.state}")
        return None

    def _vm_power_button(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("power button", "Running")) is not None:
            return bad
        if self.guest_obeys_power_button:
            self.state = "Shutdown"
            self._event("vm", "shutdown")
            self._event("vmm", "shutdown")
            self._exit_soon(0)  # a guest power-off ends the cloud-hypervisor process
        return Answer(204)

    def _vm_shutdown(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("shut down", "Running", "Paused")) is not None:
            return bad
        self.state = "Shutdown"
        self._event("vm", "shutdown")
        return Answer(204)

    def _vm_pause(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("pause", "Running")) is not None:
            return bad
        self._event("vm", "pausing")
        self.state = "Paused"
        self._event("vm", "paused")
        return Answer(204)

    def _vm_resume(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("resume", "Paused")) is not None:
            return bad
        self._event("vm", "resuming")
        self.state = "Running"
        self._event("vm", "resumed")
        return Answer(204)

    # --- devices ---------------------------------------------------------------------

    def _added(self, dev_id: str, dev: dict[str, Any]) -> Answer:
        if dev_id in self.devices:
            return _err(500, "Error from API", "The device could not be added", f"{dev_id} exists")
        self.devices[dev_id] = dev
        if self.state == "Created":
            return Answer(204)  # cold plug: applied at boot
        slot = self._next_slot
        self._next_slot += 1
        return Answer(200, {"id": dev_id, "bdf": f"0000:00:{slot:02x}.0"})

    def _vm_add_net(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("add net", "Created", "Running", "Paused")) is not None:
            return bad
        dev_id = body.get("id") or f"_net{len(self.devices)}"
        if fds:
            if "tap" in body:
                return _err(400, "both a tap name and tap fds were given")
            if body.get("num_queues", 2) != 2 * len(fds):
                return _err(
                    500,
                    "Error from API",
                    f"num_queues {body.get('num_queues', 2)} does not match {len(fds)} tap fds",
                )
            for fd in fds:
                info = _inspect_fd(fd, dev_id)
                if info is None:
                    return _err(400, f"fd {fd} received for {dev_id} is not open")
                self.fds.append(info)
        elif "tap" not in body and not body.get("vhost_user"):
            return _err(
                500,
                "Error from API",
                "neither tap nor fds: cloud-hypervisor would create a tap of its own",
            )
        return self._added(dev_id, body)

    def _vm_add_device(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("add device", "Created", "Running", "Paused")) is not None:
            return bad
        if not str(body.get("path", "")).startswith("/sys/bus/pci/devices/"):
            return _err(500, "Error from API", f"{body.get('path')!r} is not a PCI sysfs path")
        return self._added(body.get("id") or f"_dev{len(self.devices)}", body)

    def _vm_add_vdpa(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("add vdpa", "Created", "Running", "Paused")) is not None:
            return bad
        return self._added(body.get("id") or f"_vdpa{len(self.devices)}", body)

    def _vm_remove_device(self, body: Any, fds: list[int]) -> Answer:
        if (bad := self._need_running("remove device", "Running", "Paused")) is not None:
            return bad
        dev_id = body.get("id")
        if dev_id not in self.devices:
            return _err(
                500, "Error from API", "The device could not be removed", f"{dev_id} not found"
            )
        del self.devices[dev_id]
        self._event("vm", "device-removed", {"id": str(dev_id)})
        return Answer(204)


def _inspect_fd(fd: int, device_id: str | None) -> FdInfo | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    mode = st.st_mode
    kind = (
        "chr"
        if stat.S_ISCHR(mode)
        else "fifo"
        if stat.S_ISFIFO(mode)
        else "reg"
        if stat.S_ISREG(mode)
        else "sock"
        if stat.S_ISSOCK(mode)
        else "other"
    )
    tap_name = None
    if kind == "chr":
        import fcntl

        with contextlib.suppress(OSError):
            # TUNGETIFF: the tap this /dev/net/tun fd is attached to
            out = fcntl.ioctl(fd, 0x800454D2, bytes(40))
            tap_name = out[:16].rstrip(b"\0").decode()
    return FdInfo("vm.add-net", device_id, kind, st.st_dev, st.st_ino, st.st_rdev, tap_name)


# --- HTTP plumbing --------------------------------------------------------------------


class _FdReader(io.RawIOBase):
    """A socket reader that keeps the SCM_RIGHTS fds arriving with the bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fds: list[int] = []
        self.truncated = False
        self.reads = 0  # reads since the last request was dispatched
        self.late_fds = False  # fds arrived after the first read of a request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data, ancdata, flags, _ = self.sock.recvmsg(
            len(buffer), socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
        )
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
                self.fds.extend(fds)
                self.late_fds = self.late_fds or self.reads > 0
        self.reads += 1
        if flags & socket.MSG_CTRUNC:
            self.truncated = True
        buffer[: len(data)] = data
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Cloud Hypervisor API"
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._fd_reader = _FdReader(self.connection)
        self.rfile = io.BufferedReader(self._fd_reader, 65536)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fds, self._fd_reader.fds = self._fd_reader.fds, []
        if self._fd_reader.late_fds or self._fd_reader.truncated:
            self.server.fake.violations.append(
                f"{self.path}: fds did not arrive with the request's first bytes (or were cut)"
            )
        self._fd_reader.reads = 0
        self._fd_reader.late_fds = False
        answer = self.server.fake.handle(self.command, self.path, raw, fds)
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        if answer.status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, fake: FakeVmm, fd: int | None = None) -> None:
        self.fake = fake
        super().__init__(path, _Handler, bind_and_activate=fd is None)
        if fd is not None:  # --api-socket fd=N: a socket already listening, made by the caller
            self.socket.close()
            self.socket = socket.socket(fileno=fd)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout tests) is not an error; anything else is."""
        err = sys.exc_info()[1]
        if not isinstance(err, BrokenPipeError | ConnectionResetError):
            self.fake.violations.append(f"server error: {err!r}")


class FakeServer:
    """The fake API served on a unix socket in a background thread (for in-process tests)."""

    def __init__(self, path: str, fake: FakeVmm, fd: int | None = None) -> None:
        self.path = path
        self.fake = fake
        self._owns_path = fd is None
        self._server = _Server(path, fake, fd)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        if self._owns_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def event_writer(fd: int) -> Callable[[str, str, dict[str, str] | None], None]:
    """An ``emit`` callback writing cloud-hypervisor's event-monitor format to ``fd``."""
    start = time.monotonic()
    lock = threading.Lock()

    def emit(source: str, name: str, props: dict[str, str] | None) -> None:
        elapsed = time.monotonic() - start
        secs = int(elapsed)
        event = {
            "timestamp": {"secs": secs, "nanos": int((elapsed - secs) * 1e9)},
            "source": source,
            "event": name,
            "properties": props,
        }
        data = (json.dumps(event, indent=2) + "\n\n").encode()
        with lock, contextlib.suppress(OSError):
            os.write(fd, data)

    return emit


# --- the fake executable ----------------------------------------------------------------


def _option(argv: list[str], flag: str, key: str) -> str | None:
    if flag not in argv:
        return None
    value = argv[argv.index(flag) + 1]
    for part in value.split(","):
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return None


def main(argv: list[str]) -> int:
    """Behave like ``cloud-hypervisor --api-socket path=…|fd=M --event-monitor fd=N``."""
    mode = os.environ.get("FAKE_CH_MODE", "normal")
    path = _option(argv, "--api-socket", "path")
    api_fd = _option(argv, "--api-socket", "fd")
    monitor = _option(argv, "--event-monitor", "fd")
    if (path is None) == (api_fd is None):
        sys.stderr.write("Error: --api-socket path=… or fd=… is required\n")
        return 2
    if mode == "exit-early":
        sys.stderr.write("Error: Failed to open /dev/kvm: No such file or directory (fake)\n")
        return 1
    if mode == "long-serial":  # one line far over asyncio's 64 KiB line limit
        print("x" * 200_000, flush=True)
    print("fake cloud-hypervisor serial console", flush=True)
    emit = event_writer(int(monitor)) if monitor is not None else None
    if emit is not None:
        emit("vmm", "starting", None)
    # Plain assignments, no locks: finish() also runs inside the SIGTERM handler, where
    # taking a lock the interrupted main thread holds (threading.Event) would deadlock.
    result: list[int | None] = [None]

    def finish(code: int) -> None:
        if result[0] is None:
            result[0] = code

    def wait_done(limit: float) -> int:
        deadline = time.monotonic() + limit
        while result[0] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return result[0] or 0

    fake = FakeVmm(
        emit=emit,
        on_exit=finish,
        guest_obeys_power_button=mode != "ignore-power",
        stubborn=mode == "stubborn",
        die_on="vm.boot" if mode == "die-on-boot" else None,
        panic_after_boot=mode == "panic",
    )

    def on_term(signum: int, frame: object) -> None:
        del frame
        if mode != "stubborn":
            if emit is not None:
                emit("vmm", "shutdown", None)
            finish(0)

    signal.signal(signal.SIGTERM, on_term)
    if mode == "no-socket":
        return wait_done(60)
    server = (
        FakeServer(path, fake) if api_fd is None else FakeServer(f"fd:{api_fd}", fake, int(api_fd))
    )
    with server:
        code = wait_done(120)
    record = os.environ.get("FAKE_CH_RECORD")
    if record:
        with open(record, "w") as f:
            json.dump(
                {
                    "fds": [asdict(i) for i in fake.fds],
                    "requests": fake.requests,
                    "violations": fake.violations,
                    "config": fake.config,
                    "devices": fake.devices,
                },
                f,
            )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
