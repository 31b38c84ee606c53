"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder, import_image
from support.offline import REPO, one_line, run_fb, store_listable

from fusebundle.errors import UserError, go_quote, shown


@pytest.fixture(scope="module")
def small_image(dockerd, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("bad")
    r = RootfsBuilder().dir("etc").file("etc/motd", "hi\n").dir("bin")
    for i in range(20):
        r.file(f"bin/f{i:02d}", b"x" * 3000)
    r.write(tmp / "small.tar")
    import_image(dockerd.client, tmp / "small.tar", "fbtest/small:1", ['CMD ["/bin/f00"]'])
    return "fbtest/small:1"


def _fails(r, *words: str, code: int | None = None) -> None:
    assert r.returncode != 0, r.stdout
    if code is not None:
        assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("fusebundle: ")
    for w in words:
        assert w in lines[0], lines[0]


def _nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "out.tar").exists()
    assert list(tmp_path.glob(".fusebundle-*")) == []


GOOD_ENTRY = "  - name: a\n    image: fbtest/small:1\n"

CONFIG_CASES = {
    "malformed": ("onboot:\n  - name: a\n   image: [oops\n", ["system.yml", "line"]),
    "tabs-and-junk": ("onboot: [\n", ["system.yml"]),
    "top-level-list": ("- a\n- b\n", ["mapping"]),
    "unknown-top-key": ("onbot:\n" + GOOD_ENTRY, ["onbot"]),
    "unknown-entry-key": ("onboot:\n" + GOOD_ENTRY + "    comand: [x]\n", ["comand", "a"]),
    "wrong-type": ("onboot:\n" + GOOD_ENTRY + "    command: /bin/sh\n", ["command"]),
    "missing-name": ("onboot:\n  - image: fbtest/small:1\n", ["name"]),
    "missing-image": ("onboot:\n  - name: a\n", ["image"]),
    "duplicate-service": ("services:\n" + GOOD_ENTRY + GOOD_ENTRY, ["duplicate", "a"]),
    "unknown-uid-name": ("onboot:\n" + GOOD_ENTRY + "    uid: nobody-here\n",
                         ["nobody-here", "uid"]),
    "hostile-name": ("onboot:\n  - name: ../x\n    image: fbtest/small:1\n", ["name"]),
    "hostile-file": ("files:\n  - path: ../../etc/passwd\n    contents: x\n", ["path"]),
    "file-two-kinds": ("files:\n  - path: a\n    contents: x\n    symlink: b\n",
                       ["contents", "symlink"]),
    "bad-capability": ("onboot:\n" + GOOD_ENTRY + "    capabilities: [CAP_FLY]\n",
                       ["CAP_FLY"]),
    "bad-bind": ("onboot:\n" + GOOD_ENTRY + "    binds: [/only-one-part]\n", ["binds"]),
    "negative-uid": ("onboot:\n" + GOOD_ENTRY + "    uid: -1\n", ["uid"]),
    "float-uid": ("onboot:\n" + GOOD_ENTRY + "    uid: 1.5\n", ["uid"]),
    "namespace-word": ("onboot:\n" + GOOD_ENTRY + "    net: hots\n", ["net", "hots"]),
    "yaml-1.1-bool-is-a-string": ("onboot:\n  - name: n\n    image: fbtest/small:1\n"
                                  "    readonly: yes\n", ["readonly"]),
    "duplicate-key": ("onboot:\n" + GOOD_ENTRY + "onboot:\n" + GOOD_ENTRY, ["onboot"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_errors(fb, tmp_path, case) -> None:
    text, words = CONFIG_CASES[case]
    cfg = tmp_path / "system.yml"
    cfg.write_text(text)
    r = fb("pack", cfg, "-o", tmp_path / "out.tar")
    _fails(r, *words, code=2)
    _nothing_left(tmp_path)


def test_yaml_12_keeps_n_as_a_name(fb, small_image, tmp_path) -> None:
    # YAML 1.1 would read `n` as false; the bundle must be called n.
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n  - name: n\n    image: fbtest/small:1\n")
    r = fb("pack", cfg, "-o", tmp_path / "out.tar")
    assert r.returncode == 0, r.stderr
    import tarfile
    with tarfile.open(tmp_path / "out.tar") as t:
        assert "containers/onboot/000-n/config.json" in t.getnames()


def test_missing_config_file(fb, tmp_path) -> None:
    _fails(fb("pack", tmp_path / "nope.yml", "-o", tmp_path / "out.tar"), "nope.yml")
    _nothing_left(tmp_path)


def test_missing_image_that_cannot_be_pulled(fb, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n  - name: a\n    image: fbtest/does-not-exist:1\n")
    _fails(fb("pack", cfg, "-o", tmp_path / "out.tar", timeout=180),
           "fbtest/does-not-exist:1")
    _nothing_left(tmp_path)


def test_engine_not_running(fb, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n" + GOOD_ENTRY)
    r = fb("pack", cfg, "-o", tmp_path / "out.tar",
           env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    _fails(r, "Docker engine", "no-engine.sock")
    _nothing_left(tmp_path)


def test_output_directory_missing(fb, small_image, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n" + GOOD_ENTRY)
    _fails(fb("pack", cfg, "-o", tmp_path / "no-such-dir" / "out.tar"), "does not exist")
    assert not (tmp_path / "no-such-dir").exists()


@pytest.mark.parametrize("damage", ["truncate", "checksum"])
def test_corrupt_cached_tar(fb, small_image, tmp_path, cache_dir, damage) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n" + GOOD_ENTRY)
    first = tmp_path / "first.tar"
    assert fb("pack", cfg, "-o", first).returncode == 0
    (tar,) = (cache_dir / "exports").glob("*.tar")
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.seek(512 * 2 + 10)  # the third header (bin/f00) and some of its data
            blob = bytearray(f.read(600))
            for i in range(len(blob)):
                blob[i] ^= 0x5A
            f.seek(512 * 2 + 10)
            f.write(blob)
    r = fb("pack", cfg, "-o", tmp_path / "out.tar")
    _fails(r, "corrupt", str(tar))
    _nothing_left(tmp_path)


def test_missing_source_file(fb, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text(f"files:\n  - path: etc/x\n    source: {tmp_path}/absent\n")
    _fails(fb("pack", cfg, "-o", tmp_path / "out.tar"), "etc/x", "absent")
    _nothing_left(tmp_path)


def test_trust_is_accepted_with_one_warning(fb, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("trust:\n  org: [linuxkit]\n  image: [a/b]\nfiles:\n  - path: x\n"
                   "    contents: y\n")
    r = fb("pack", cfg, "-o", tmp_path / "out.tar")
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "trust" in r.stderr
    assert (tmp_path / "out.tar").exists()


# ------------------------------------------------- pack -o onto what is not a regular file
# (issue 17, defect 1: a rename over -o once turned /dev/null into a regular file)
FILES_ONLY = "files:\n  - path: etc/motd\n    contents: hello\n"


def _offline_pack(tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "system.yml"
    cfg.write_text(FILES_ONLY)
    return run_fb(tmp_path / "store", "pack", "-q", cfg, "-o", out, timeout=60)


def _no_temps(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if ".fusebundle-" in p.name] == []


def _null_device(tmp_path: Path) -> Path:
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    return dev


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize("via_symlink", [False, True])
def test_pack_into_a_character_device_keeps_it(tmp_path, via_symlink) -> None:
    dev = _null_device(tmp_path)
    out = dev
    if via_symlink:
        out = tmp_path / "link"
        out.symlink_to(dev)
    r = _offline_pack(tmp_path, out)
    assert r.returncode == 0, r.stderr
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert not via_symlink or out.is_symlink()
    _no_temps(tmp_path)


def test_pack_into_a_fifo_streams_the_tar(tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = _offline_pack(tmp_path, fifo)
    reader.join(30)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with tarfile.open(fileobj=io.BytesIO(got[0])) as t:
        assert t.extractfile("etc/motd").read() == b"hello"
    _no_temps(tmp_path)


def test_pack_over_a_symlink_replaces_its_target_not_the_link(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.tar"
    target.write_bytes(b"old")
    link = tmp_path / "out.tar"
    link.symlink_to(target)
    r = _offline_pack(tmp_path, link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink()
    with tarfile.open(target) as t:
        assert t.extractfile("etc/motd").read() == b"hello"
    _no_temps(tmp_path / "real")


def _refused(tmp_path: Path, out: Path, *words: str) -> None:
    r = _offline_pack(tmp_path, out)
    one_line(r, str(out), *words, code=1)
    _no_temps(tmp_path)
    store_listable(tmp_path / "store")


def test_pack_refuses_a_directory(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    _refused(tmp_path, tmp_path / "d", "is a directory")
    assert (tmp_path / "d").is_dir() and list((tmp_path / "d").iterdir()) == []


def test_pack_refuses_a_dangling_symlink(tmp_path) -> None:
    link = tmp_path / "out.tar"
    link.symlink_to(tmp_path / "elsewhere.tar")
    _refused(tmp_path, link, "dangling symlink")
    assert link.is_symlink() and not (tmp_path / "elsewhere.tar").exists()


def test_pack_refuses_a_socket(tmp_path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        _refused(tmp_path, path, "is a socket")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_pack_refuses_a_block_device(tmp_path) -> None:
    dev = tmp_path / "disk"
    os.mknod(dev, stat.S_IFBLK | 0o600, os.makedev(7, 250))  # a loop device number
    _refused(tmp_path, dev, "block device")
    assert stat.S_ISBLK(os.lstat(dev).st_mode)


# ------------------------------------------- files: source: from procfs and sysfs (defect 10)
SYSFS_FILES = ("/sys/devices/system/cpu/online", "/sys/kernel/mm/transparent_hugepage/enabled")


def _pack_sources(tmp_path: Path, *sources: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "system.yml"
    cfg.write_text("files:\n" + "".join(f"  - path: etc/f{i}\n    source: {s}\n"
                                         for i, s in enumerate(sources)))
    (tmp_path / "out").mkdir()
    return run_fb(tmp_path / "store", "pack", "-q", cfg, "-o", tmp_path / "out" / "b.tar")


def test_kernel_files_pack_with_their_real_bytes(tmp_path) -> None:
    sysfs = next((p for p in SYSFS_FILES if os.access(p, os.R_OK)), None)
    if sysfs is None:
        pytest.skip("no known sysfs file here")
    assert os.stat("/proc/version").st_size == 0 and os.stat(sysfs).st_size == 4096
    r = _pack_sources(tmp_path, "/proc/version", sysfs)
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / "out" / "b.tar") as t:
        got = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    assert got == {"etc/f0": Path("/proc/version").read_bytes(),
                   "etc/f1": Path(sysfs).read_bytes()}
    assert got["etc/f0"].startswith(b"Linux version")


def test_a_kernel_file_past_the_bound_is_one_line(monkeypatch) -> None:
    from fusebundle.bundle import view
    monkeypatch.setattr(view, "MAX_PSEUDO_BYTES", 16)
    with pytest.raises(UserError, match="more than 0 MiB from a kernel file"):
        view._read_pseudo("/proc/self/status", "x")


def test_a_kernel_stream_without_end_is_one_line(tmp_path) -> None:
    from fusebundle.bundle import view
    fifo = tmp_path / "stream"  # like /proc/kmsg: open, but nothing to read yet
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(fifo, os.O_WRONLY)
    try:
        with pytest.raises(UserError, match="no end"):
            view._read_pseudo(str(fifo), "x")
    finally:
        os.close(w)
        os.close(r)


# ----------------------------------- names with control characters; mount without the right
# (defect 13: each must stay one line, names quoted as Go's %q does)
@pytest.mark.parametrize(("text", "quoted", "code"), [
    ('services:\n  - name: "a\\nb"\n    image: alpine\n', '("a\\nb")', 2),
    ('files:\n  - {path: "etc/a\\nb", contents: x, symlink: y}\n', '("etc/a\\nb")', 2),
    ('files:\n  - {path: etc/x, source: "/nowhere/a\\u0085\\u2028b"}\n',
     'source "/nowhere/a\\u0085\\u2028b"', 1),
])
def test_names_with_control_characters_are_quoted(tmp_path, text, quoted, code) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text(text)
    (tmp_path / "out").mkdir()
    r = run_fb(tmp_path / "store", "pack", "-q", cfg, "-o", tmp_path / "out" / "b.tar")
    one_line(r, quoted, code=code)
    assert list((tmp_path / "out").iterdir()) == []


def test_paths_with_newlines_on_the_command_line_are_quoted(tmp_path) -> None:
    cfg = tmp_path / "sys\ntem.yml"
    cfg.write_text("files: [\n")
    one_line(run_fb(tmp_path / "store", "pack", cfg, "-o", tmp_path / "o.tar"),
             '"' + str(tmp_path) + '/sys\\ntem.yml": line', code=2)
    cfg = tmp_path / "system.yml"
    cfg.write_text(FILES_ONLY)
    out = tmp_path / "no\ndir" / "o.tar"
    one_line(run_fb(tmp_path / "store", "pack", cfg, "-o", out), "no\\ndir", "does not exist")


def test_go_quote_is_go_strconv_quote() -> None:
    # expected values as Go's strconv.Quote prints them
    assert go_quote("a\nb\t\"c\"\\") == '"a\\nb\\t\\"c\\"\\\\"'
    assert go_quote("\x00\x1b\x7f") == '"\\x00\\x1b\\x7f"'
    assert go_quote("é\u00a0\u2028\U000e0001😀") == '"é\\u00a0\\u2028\\U000e0001😀"'
    assert go_quote(b"\xff\xfeok") == '"\\xff\\xfeok"'
    assert shown("plain name-1") == "plain name-1" and shown("a\nb") == '"a\\nb"'


@pytest.mark.skipif(not (os.geteuid() == 0 and os.path.exists("/dev/fuse")
                         and shutil.which("fusermount3") and shutil.which("setpriv")),
                    reason="needs root, /dev/fuse, fusermount3 and setpriv")
@pytest.mark.parametrize("foreground", [False, True])
def test_mount_without_the_right_to_mount_says_why_once(tmp_path, foreground) -> None:
    # Without CAP_SYS_ADMIN (dropped from the bounding set, so the setuid fusermount3 cannot
    # regain it) libfuse's mount(2) and fusermount3's both fail with EPERM and say so.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "system.yml"
    cfg.write_text(FILES_ONLY)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none",
           "FUSEBUNDLE_CACHE_DIR": str(tmp_path / "store"), "PYTHONPATH": str(REPO)}
    r = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin",
                        sys.executable, "-m", "fusebundle", "mount",
                        *(["--foreground"] if foreground else []), cfg, mnt],
                       env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, check=False)
    one_line(r, str(mnt), "mount failed: Operation not permitted", code=1)
    assert not os.path.ismount(mnt) and list(mnt.iterdir()) == []
    store_listable(tmp_path / "store")


def test_a_refused_output_is_said_before_any_image_is_asked(tmp_path) -> None:
    # The -o check comes before the images are fetched: an image no source has would
    # otherwise be the line, after minutes of pulling when it is a real image.
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n  - name: gone\n    image: fbtest/not-in-the-store:1\n")
    (tmp_path / "d").mkdir()
    r = run_fb(tmp_path / "store", "pack", "-q", "--from", "store", cfg, "-o", tmp_path / "d")
    one_line(r, str(tmp_path / "d"), "is a directory", code=1)
    r = run_fb(tmp_path / "store", "pack", "-q", "--from", "store", cfg, "-o",
               tmp_path / "no-dir" / "out.tar")
    one_line(r, "does not exist", code=1)
    r = run_fb(tmp_path / "store", "pack", "-q", "--from", "store", cfg, "-o", tmp_path / "o.tar")
    one_line(r, "fbtest/not-in-the-store:1")  # a good -o: the image is the problem
    assert not (tmp_path / "o.tar").exists()
