"""JSON views of a :class:`~launcher.status.model.StatusSnapshot` (the ``/status`` body).

Called by the status server and by ``virt-launcher status --json`` tests. Keys are
camelCase like KubeVirt's API (``status.interfaces`` fields keep KubeVirt's names);
times are RFC 3339 UTC strings. The shape is described by ``openapi.yaml`` beside this
module.
"""

from __future__ import annotations

import time
from typing import Any

from .doctor import Diagnosis, Exchange
from .model import Event, InterfaceStatus, StatusSnapshot

__all__ = ["status_json", "rfc3339", "diagnosis_json"]


def rfc3339(t: float) -> str:
    """Wall time ``t`` as ``2026-01-02T03:04:05.678Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _event(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"time": rfc3339(e.time), "source": e.source, "kind": e.kind}
    if e.message:
        out["message"] = e.message
    for key in ("iface", "mac", "address"):
        value = getattr(e, key)
        if value is not None:
            out[key] = value
    return out


def _time(t: float | None) -> str | None:
    return None if t is None else rfc3339(t)


def _exchange(e: Exchange | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "last": e.last_kind,
        "lastAt": _time(e.last_at),
        "reason": e.reason,
        "messages": [
            {"kind": kind, "time": rfc3339(at), "address": address}
            for kind, at, address in e.messages
        ],
    }


def diagnosis_json(d: Diagnosis) -> dict[str, Any]:
    """``interfaces[].diagnosis``: the network doctor's view of one NIC."""
    return {
        "verdict": d.verdict,
        "reason": d.reason,
        "checkedAt": rfc3339(d.checked_at),
        "findings": [
            {"code": f.code, "severity": f.severity, "message": f.message, "fix": f.fix}
            for f in d.findings
        ],
        "dhcp4": _exchange(d.dhcp4),
        "dhcp6": _exchange(d.dhcp6),
        "routerAdverts": {
            "solicits": d.router_solicits,
            "lastSolicitAt": _time(d.last_solicit_at),
            "sent": d.router_adverts,
            "lastSentAt": _time(d.last_advert_at),
        },
        "lease": {
            "ageSeconds": d.lease_age_s,
            "renewDueSeconds": d.renew_due_s,
            "renewed": d.renewed,
        },
        "mtu": dict(d.mtu),
        "probes": [
            {
                "target": p.target,
                "interface": p.interface,
                "answered": p.answered,
                "mac": p.mac,
                "rttMs": p.rtt_ms,
                "detail": p.detail,
            }
            for p in d.probes
        ],
    }


def _interface(i: InterfaceStatus) -> dict[str, Any]:
    d = i.dhcp
    return {
        "name": i.name,
        "interfaceName": i.interface_name,
        "mac": i.mac,
        "ipAddress": i.ip_address,
        "ipAddresses": list(i.ip_addresses),
        "infoSource": i.info_source,
        "queueCount": i.queue_count,
        "linkState": i.link_state,
        "binding": i.binding,
        "podInterface": i.pod_interface,
        "tap": i.tap,
        "bridge": i.bridge,
        "leases": [
            {
                "family": lease.family,
                "address": lease.address,
                "mac": lease.mac,
                "handedOutAt": rfc3339(lease.handed_out_at),
                "kind": lease.kind,
            }
            for lease in i.leases
        ],
        "dhcp": {
            "serving": d.serving,
            "offers": d.offers,
            "acks": d.acks,
            "naks": d.naks,
            "declines": d.declines,
            "releases": d.releases,
            "informs": d.informs,
            "received": d.received,
            "malformed": d.malformed,
            "rateLimited": d.rate_limited,
            "v6": dict(d.v6),
            "routerAdverts": d.router_adverts,
            "routerSolicits": d.router_solicits,
        },
        "traffic": None
        if i.traffic is None
        else {
            "rxBytes": i.traffic.rx_bytes,
            "txBytes": i.traffic.tx_bytes,
            "rxPackets": i.traffic.rx_packets,
            "txPackets": i.traffic.tx_packets,
        },
        "hotplug": None
        if i.hotplug_state is None
        else {"state": i.hotplug_state, "lastError": i.hotplug_error},
        "diagnosis": None if i.diagnosis is None else diagnosis_json(i.diagnosis),
    }


def status_json(s: StatusSnapshot) -> dict[str, Any]:
    """The ``/status`` document."""
    hv = s.hypervisor
    la = s.launcher
    return {
        "time": rfc3339(s.time),
        "vm": s.vm,
        "phase": s.phase,
        "ready": s.ready,
        "notReadyReason": s.not_ready_reason,
        "conditions": [
            {
                "type": c.type,
                "status": "True" if c.status else "False",
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": rfc3339(c.last_transition_time),
            }
            for c in s.conditions
        ],
        "launcher": {
            "pid": la.pid,
            "startedAt": rfc3339(la.started_at),
            "uptimeSeconds": la.uptime_s,
            "rssBytes": la.rss_bytes,
            "cpuSeconds": la.cpu_s,
            "loopLagSeconds": la.loop_lag_s,
            "timeToReadySeconds": la.time_to_ready_s,
        },
        "hypervisor": None
        if hv is None
        else {
            "kind": hv.kind,
            "pid": hv.pid,
            "state": hv.state,
            "uptimeSeconds": hv.uptime_s,
            "cpuSeconds": hv.cpu_s,
            "rssBytes": hv.rss_bytes,
        },
        "interfaces": [_interface(i) for i in s.interfaces],
        "nftables": {"digest": s.nftables_digest},
        "events": [_event(e) for e in s.events],
        "processes": [
            {
                "role": p.role,
                "pid": p.pid,
                "uid": p.uid,
                "gid": p.gid,
                "capEffective": list(p.cap_effective),
                "capPermitted": list(p.cap_permitted),
            }
            for p in s.processes
        ],
    }
