"""Live NIC hot plug and unplug (issue 9): watch the spec and podinfo, diff, act.

``watch`` notices kubelet's ``..data`` symlink swaps of the mounted spec and
downward-API directories; ``diff`` compares the running spec against the new one plus
the Multus network-status and says what can change live; ``manager`` (when wired into
``launcher.run``) executes the plug/unplug actions. See docs/hotplug.md.
"""
