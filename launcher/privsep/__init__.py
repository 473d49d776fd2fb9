"""Privilege separation: the launcher drops every capability after start-up; a small
helper keeps the few that runtime work needs and takes only typed requests.

:mod:`.caps` (capabilities and prctl through libc), :mod:`.codec` (the typed request
codec), :mod:`.helper` (the helper process and the launcher's end of it), :mod:`.vmm`
(what the VMM's non-root user needs). Used by the console script, ``launcher.run``,
``launcher.agent.AgentRunner`` and the status endpoint. See docs/privileges.md.
"""

__all__ = ["caps", "codec", "helper", "vmm"]
