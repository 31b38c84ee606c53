"""The scan keeps its columns narrow while it runs (issue 22's memory at a million members):
a column widens when a chunk does not fit, never losing a value, and the saved file is the one
a wide scan would save."""

from __future__ import annotations

import array
from pathlib import Path

from support.tarbytes import END, check_against_tarfile, header, member, pax, write

from fusebundle.tar import colfile, scan
from fusebundle.tar.scan import ScanColumns


def test_a_column_widens_only_as_far_as_its_values_need() -> None:
    col = array.array("B")
    steps = [([1, 255], "B"), ([256], "H"), ([70_000], "I"), ([1 << 40], "Q"), ([-5], "q")]
    want: list[int] = []
    for values, typecode in steps:
        col = scan._extended(col, array.array("q", values))
        want += values
        assert col.typecode == typecode
        assert col.tolist() == want


def test_big_values_past_the_first_chunk_survive(tmp_path: Path) -> None:
    # Past the first chunk every column has settled narrow; the last members need 32 and 64
    # bits (a uid, a size past 64 KiB, a negative and a fractional mtime from PAX records).
    n = scan._CHUNK + 50
    parts = [member(b"d/f%05d" % i, b"x", mtime=1_600_000_000 + i % 7) for i in range(n)]
    parts.append(header(b"d/uid", uid=70_000, gid=1 << 20))
    parts.append(member(b"d/big", bytes(70_000)))
    parts.append(pax([(b"mtime", b"-5.25")]) + member(b"d/old"))
    path = write(tmp_path, b"".join(parts) + END)
    index = check_against_tarfile(path)
    assert index.entry(-1).mtime_ns == -5_250_000_000
    assert index.entry(-3).uid == 70_000 and index.entry(-2).size == 70_000


def test_columns_stay_narrow_for_a_plain_layer(tmp_path: Path) -> None:
    # Names under 64 KiB in all, sizes of a byte, root's ids: what a scan holds per member is
    # the saved width, not 8 bytes a number.
    n = 2 * scan._CHUNK + 1
    data = b"".join(member(b"f%05d" % i, b"y") for i in range(n)) + END
    from fusebundle.tar.header import FileBytes

    path = write(tmp_path, data)
    with open(path, "rb") as f:
        cols: ScanColumns = scan.scan_tar(FileBytes(f.fileno(), len(data)), None)
    widths = {a: getattr(cols, a).typecode for a in ("uids", "gids", "sizes", "offsets")}
    assert widths == {"uids": "B", "gids": "B", "sizes": "B", "offsets": "I"}
    # 8,193 names of 6 bytes end below 65,536; offsets pass it (a member is 1 KiB here).
    assert cols.name_ends.typecode == "H" and len(cols.name_ends) == n


def test_pieces_are_saved_as_the_joined_blob(tmp_path: Path) -> None:
    parts = [b"alpha/", b"", b"beta" * 1000, bytes(range(256))]
    nums = array.array("H", [1, 2, 3])
    for name, blob in (("joined", b"".join(parts)), ("pieces", colfile.Pieces(parts))):
        colfile.write(str(tmp_path / name), b"FBTEST", 1, b"meta",
                      [("names", "s", blob), ("nums", "H", nums)])
    assert (tmp_path / "joined").read_bytes() == (tmp_path / "pieces").read_bytes()
    mapped = colfile.read(str(tmp_path / "pieces"), b"FBTEST", 1)
    assert mapped is not None and bytes(mapped["names"]) == b"".join(parts)
