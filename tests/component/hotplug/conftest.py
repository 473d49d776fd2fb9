"""Fixtures shared with the cloud-hypervisor component tests (the fake VMM executable)."""

from __future__ import annotations

from tests.component.cloud_hypervisor.conftest import events_pipe, fake, sock_dir
from tests.component.cloud_hypervisor.test_adapter import binary, record, taps

__all__ = ["binary", "events_pipe", "fake", "record", "sock_dir", "taps"]
