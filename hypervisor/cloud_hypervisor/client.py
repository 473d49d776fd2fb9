"""Typed client for cloud-hypervisor's REST API (HTTP/1.1 over its ``--api-socket``).

Used by :mod:`hypervisor.cloud_hypervisor.adapter`. Requests go through aiohttp with a
``UnixConnector``; every request has a timeout; a non-2xx answer raises
:class:`~hypervisor.errors.ApiError` carrying the endpoint, status and body (cloud-hypervisor
answers errors with a JSON list of messages, outermost first); a socket that cannot be
reached raises :class:`~hypervisor.errors.HypervisorError` naming its path.

``vm.add-net`` with pre-opened tap fds is the one exception: cloud-hypervisor takes those
fds from the SCM_RIGHTS ancillary data of the request's *own* connection, and aiohttp
cannot send ancillary data. :meth:`CloudHypervisorClient.add_net` therefore writes that one
request by hand over a plain unix socket — request line, headers and JSON body in a single
``socket.send_fds`` — and parses the answer with the standard library's
``http.client.HTTPResponse`` (in a worker thread; the socket timeout bounds every step).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp

from hypervisor.errors import ApiError, HypervisorError

__all__ = ["CloudHypervisorClient", "API_ROOT"]

log = logging.getLogger(__name__)

API_ROOT = "/api/v1"


class CloudHypervisorClient:
    """One cloud-hypervisor API socket. Use as ``async with`` or call :meth:`close`."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CloudHypervisorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (safe to call twice)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def request(self, method: str, endpoint: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer, or None for an empty answer."""
        url = f"http://localhost{API_ROOT}/{endpoint}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        log.debug("--> %s %s %s", method, endpoint, data.decode() if data else "")
        try:
            async with self._get_session().request(method, url, data=data, headers=headers) as resp:
                status = resp.status
                text = await resp.text()
        except TimeoutError as err:
            raise HypervisorError(
                f"cloud-hypervisor {endpoint} got no answer within {self.timeout:g} s "
                f"on {self.socket_path}"
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise HypervisorError(
                f"cloud-hypervisor API socket {self.socket_path} refused {endpoint}: {err}"
            ) from err
        return self._answer(endpoint, status, text)

    @staticmethod
    def _answer(endpoint: str, status: int, text: str) -> Any:
        log.debug("<-- %s %s %s", endpoint, status, text)
        if not 200 <= status < 300:
            raise ApiError(endpoint, status, text)
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as err:
            raise HypervisorError(
                f"cloud-hypervisor {endpoint} answered {status} with non-JSON body {text[:200]!r}"
            ) from err

    def _put_fds_blocking(self, endpoint: str, body: Any, fds: Sequence[int]) -> tuple[int, str]:
        payload = json.dumps(body).encode()
        head = (
            f"PUT {API_ROOT}/{endpoint} HTTP/1.1\r\n"
            "Host: localhost\r\n"
            "Accept: application/json\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "\r\n"
        ).encode()
        request = head + payload
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            # The whole request and the fds in one sendmsg: the VMM gets both together.
            sent = socket.send_fds(sock, [request], list(fds))
            sock.sendall(request[sent:])
            resp = http.client.HTTPResponse(sock, method="PUT")
            try:
                resp.begin()
                return resp.status, resp.read().decode(errors="replace")
            finally:
                resp.close()

    async def put_with_fds(self, endpoint: str, body: Any, fds: Sequence[int]) -> Any:
        """PUT ``body`` to ``endpoint`` with ``fds`` as SCM_RIGHTS on the same connection."""
        log.debug("--> PUT %s %s fds=%s", endpoint, json.dumps(body), list(fds))
        try:
            status, text = await asyncio.to_thread(self._put_fds_blocking, endpoint, body, fds)
        except TimeoutError as err:
            raise HypervisorError(
                f"cloud-hypervisor {endpoint} got no answer within {self.timeout:g} s "
                f"on {self.socket_path}"
            ) from err
        except (OSError, http.client.HTTPException) as err:
            raise HypervisorError(
                f"cloud-hypervisor API socket {self.socket_path} refused {endpoint}: {err}"
            ) from err
        return self._answer(endpoint, status, text)

    # --- endpoints -------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        """``vmm.ping``: the VMM version (and pid, features)."""
        answer = await self.request("GET", "vmm.ping")
        if not isinstance(answer, dict):
            raise HypervisorError(f"cloud-hypervisor vmm.ping answered {answer!r}, not an object")
        return answer

    async def create(self, vm_config: dict[str, Any]) -> None:
        """``vm.create`` with a VmConfig body (no fds: cloud-hypervisor would ignore them)."""
        await self.request("PUT", "vm.create", vm_config)

    async def boot(self) -> None:
        """``vm.boot``."""
        await self.request("PUT", "vm.boot")

    async def info(self) -> dict[str, Any]:
        """``vm.info``: config and state (``Created``, ``Running``, ``Shutdown``, ``Paused``)."""
        answer = await self.request("GET", "vm.info")
        if not isinstance(answer, dict):
            raise HypervisorError(f"cloud-hypervisor vm.info answered {answer!r}, not an object")
        return answer

    async def counters(self) -> dict[str, dict[str, int]]:
        """``vm.counters``: per-device integer counters."""
        answer = await self.request("GET", "vm.counters")
        if not isinstance(answer, dict) or not all(
            isinstance(v, dict) and all(isinstance(n, int) for n in v.values())
            for v in answer.values()
        ):
            raise HypervisorError(
                f"cloud-hypervisor vm.counters answered {answer!r}, not device → counter → int"
            )
        return {str(k): {str(n): int(c) for n, c in v.items()} for k, v in answer.items()}

    async def power_button(self) -> None:
        """``vm.power-button``: ACPI power button (graceful guest shutdown)."""
        await self.request("PUT", "vm.power-button")

    async def shutdown(self) -> None:
        """``vm.shutdown``: stop the VM without asking the guest (the VMM keeps running)."""
        await self.request("PUT", "vm.shutdown")

    async def pause(self) -> None:
        """``vm.pause``."""
        await self.request("PUT", "vm.pause")

    async def resume(self) -> None:
        """``vm.resume``."""
        await self.request("PUT", "vm.resume")

    async def vmm_shutdown(self) -> None:
        """``vmm.shutdown``: make the VMM process exit."""
        await self.request("PUT", "vmm.shutdown")

    async def add_net(self, net_config: dict[str, Any], fds: Sequence[int] = ()) -> Any:
        """``vm.add-net``; with ``fds`` the taps travel as SCM_RIGHTS (see module docstring).

        Returns the PciDeviceInfo (``{"id", "bdf"}``) when the VM is running, else None.
        """
        if fds:
            return await self.put_with_fds("vm.add-net", net_config, fds)
        return await self.request("PUT", "vm.add-net", net_config)

    async def add_device(self, device_config: dict[str, Any]) -> Any:
        """``vm.add-device`` (VFIO by sysfs path); PciDeviceInfo when running, else None."""
        return await self.request("PUT", "vm.add-device", device_config)

    async def add_vdpa(self, vdpa_config: dict[str, Any]) -> Any:
        """``vm.add-vdpa``; PciDeviceInfo when running, else None."""
        return await self.request("PUT", "vm.add-vdpa", vdpa_config)

    async def remove_device(self, device_id: str) -> None:
        """``vm.remove-device`` by id."""
        await self.request("PUT", "vm.remove-device", {"id": device_id})
