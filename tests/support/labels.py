"""Labels of LinuxKit's own packages, as `linuxkit pkg build` writes them."""

from __future__ import annotations

import json

# pkg/getty/build.yml's label (`linuxkit pkg build` writes it as JSON; mode stays a string)
GETTY_BINDS = ["/etc/resolv.conf:/etc/resolv.conf", "/run:/run", "/tmp:/tmp",
               "/etc:/hostroot/etc", "/usr/bin/ctr:/usr/bin/ctr",
               "/usr/bin/runc:/usr/bin/runc", "/containers:/containers", "/var/log:/var/log",
               "/var/lib/containerd:/var/lib/containerd", "/dev:/dev", "/sys:/sys"]
GETTY_DEVICES = [("/dev/console", 5, 1), ("/dev/tty0", 4, 0), ("/dev/ttyS0", 4, 64),
                 ("/dev/ttyAMA0", 204, 64), ("/dev/hvc0", 229, 0)]
GETTY_LABEL = json.dumps({
    "pid": "host", "net": "host", "binds": GETTY_BINDS,
    "devices": [{"path": p, "type": "c", "major": ma, "minor": mi, "mode": "0666"}
                for p, ma, mi in GETTY_DEVICES],
    "capabilities": ["all"],
})
# pkg/sshd/build.yml's label
SSHD_LABEL = json.dumps({"pid": "host", "binds": GETTY_BINDS, "capabilities": ["all"],
                         "devices": [{"path": "all", "type": "a"}]})
