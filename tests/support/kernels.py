"""A kernel image as LinuxKit builds them, shared by the kernel mount and config tests."""

from __future__ import annotations

import pytest

from .imagetools import RootfsBuilder, import_image

KERNEL = b"\x4d\x5a" + b"k" * 70000
BZIMAGE = b"\x4d\x5a" + b"K" * 5000
UCODE = b"070701" + b"u" * 3000


@pytest.fixture(scope="module")
def kernel_image(dockerd, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("kmount")
    modules = RootfsBuilder().dir("lib").dir("lib/modules").dir("lib/modules/6.1.0")
    modules.file("lib/modules/6.1.0/modules.dep", "fake.ko:\n")
    modules.file("lib/modules/6.1.0/fake.ko", b"\x00KO" * 100, mode=0o600)
    modules.symlink("lib/modules/6.1.0/build", "/usr/src/linux")
    modules.hardlink("lib/modules/6.1.0/again.ko", "lib/modules/6.1.0/fake.ko")
    other = RootfsBuilder().dir("opt").file("opt/other", "from other.tar\n", mode=0o640)
    r = RootfsBuilder()
    r.file("System.map", "ffff T start\n")
    r.file("bzImage", BZIMAGE, mode=0o600)
    r.file("intel-ucode.cpio", UCODE, mode=0o640)
    r.file("kernel", KERNEL, mode=0o644)
    r.file("kernel.tar", modules.tobytes())
    r.file("other.tar", other.tobytes())
    r.write(tmp / "kernel.tar")
    import_image(dockerd.client, tmp / "kernel.tar", "fbtest/kmount:1", ['CMD ["/kernel"]'])
    return "fbtest/kmount:1"
