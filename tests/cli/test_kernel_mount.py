"""Configs with a kernel: section, mounted and packed: the mount shows what the pack holds.

The kernel image is a stand-in for linuxkit/kernel: a `kernel` file, a `bzImage`, the modules as
`kernel.tar` (and a second tar under another name) and an `intel-ucode.cpio`.  Every conformance
scenario is mounted with a kernel section added; the kernel's forms (binary, tar: none, other
tar names, ucode) are each mounted and compared with the pack, entry by entry.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from support.kernels import BZIMAGE, KERNEL, UCODE
from support.mounts import SCENARIOS, _pack, _scenario, assert_same_tree


def _with_kernel(tmp_path: Path, kernel: str, body: str = "", name: str = "k.yml") -> Path:
    p = tmp_path / name
    p.write_text(f"kernel:\n{kernel}" + body)
    return p


def _members(tar: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar) as t:
        return {m.name: m for m in t}


@pytest.mark.skipif(not SCENARIOS, reason="no conformance scenarios")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_mounts_with_a_kernel(scenario, fb, mounts, kernel_image, tmp_path):
    body = "\n" + _scenario(scenario).read_text()
    config = _with_kernel(tmp_path, f"  image: {kernel_image}\n  cmdline: console=ttyS0\n",
                          body)
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    got = assert_same_tree(tar, mnt)
    assert (mnt / "boot/kernel").read_bytes() == KERNEL
    assert (mnt / "boot/cmdline").read_bytes() == b"console=ttyS0"
    assert (mnt / "lib/modules/6.1.0/fake.ko").read_bytes() == b"\x00KO" * 100
    assert got["lib/modules/6.1.0/build"][7] == "/usr/src/linux"
    st_a = os.lstat(mnt / "lib/modules/6.1.0/fake.ko")
    st_b = os.lstat(mnt / "lib/modules/6.1.0/again.ko")
    assert st_a.st_ino == st_b.st_ino and st_a.st_nlink == 2
    assert "System.map" not in got and "kernel.tar" not in got
    assert any(n.startswith("containers/") for n in got)


@pytest.mark.parametrize("kernel, want", [
    ("  binary: bzImage\n", {"boot/kernel": BZIMAGE}),
    ("  tar: none\n", {"boot/kernel": KERNEL}),
    ("  tar: other.tar\n", {"opt/other": b"from other.tar\n"}),
    ("  ucode: intel-ucode.cpio\n", {"boot/ucode.cpio": UCODE, "boot/kernel": KERNEL}),
])
def test_kernel_forms_mount_as_they_pack(kernel, want, fb, mounts, kernel_image, tmp_path):
    config = _with_kernel(tmp_path, f"  image: {kernel_image}\n{kernel}",
                          "onboot:\n  - name: hello\n    image: fbpub/busybox:1\n")
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    got = assert_same_tree(tar, mnt)
    for name, data in want.items():
        assert (mnt / name).read_bytes() == data
    if "tar: none" in kernel:
        assert not [n for n in got if n.startswith("lib/")]
    if "tar: other.tar" in kernel:
        assert "lib/modules" not in got
    members = _members(tar)
    if "binary" in kernel:
        assert members["boot/kernel"].mode == 0o600
    if "ucode" in kernel:
        # today's LinuxKit: boot/ucode.cpio keeps the file's mode, gets its default mtime
        m = members["boot/ucode.cpio"]
        assert (m.mode, m.uid, m.gid, m.mtime, m.size) == (0o640, 0, 0, 1492533000, len(UCODE))
        names = list(members)
        # the image's export is in name order: intel-ucode.cpio comes before kernel
        assert names[:4] == ["boot", "boot/ucode.cpio", "boot/cmdline", "boot/kernel"]


def test_kernel_mount_is_lazy(fb, mounts, kernel_image, cache_dir, tmp_path):
    config = _with_kernel(tmp_path, f"  image: {kernel_image}\n  tar: none\n")
    mnt = mounts.mount(config)
    exports = cache_dir / "exports"
    assert not list(exports.glob("*.tar")) if exports.exists() else True
    assert sorted(os.listdir(mnt)) == ["boot"]
    assert not list(exports.glob("*.tar")) if exports.exists() else True
    assert (mnt / "boot/kernel").read_bytes() == KERNEL
    assert len(list(exports.glob("*.tar"))) == 1


def test_missing_kernel_file_reads_as_an_error_not_a_crash(fb, mounts, kernel_image, tmp_path):
    config = _with_kernel(tmp_path, f"  image: {kernel_image}\n  binary: vmlinuz\n  tar: none\n")
    mnt = mounts.mount(config)
    with pytest.raises(OSError):
        os.listdir(mnt / "boot")
    r = fb("pack", "-q", config, "-o", tmp_path / "o.tar")
    assert r.returncode == 1 and "vmlinuz" in r.stderr and "Traceback" not in r.stderr
