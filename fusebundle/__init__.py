"""fusebundle: LinuxKit-style container bundles as a read-only FUSE tree or one tarball.

The house follows the data, top to bottom; every import points down this list:

    cli/      the command line: parse, one session per command, mount/umount, cache, image
    pack/     View -> one tar, cpio or kernel+initrd, written atomically
    fs/       View -> inodes -> FUSE calls (pyfuse3 + trio; only the mount server imports it)
    bundle/   config + images -> View: the tree as data (prefix dirs, bundles, files, kernel)
    images/   reference -> image handle: resolver, layered images, engine exports, flattening
    store/    blobs -> verified, uncompressed, indexed layer tars; image records; locks
    sources/  where images come from, one module per transport (TRANSPORTS), engine aside
    config/   YAML -> Config; the reference's config.json, runtime.json and metadata
    tar/      the tar format both ways: the one-pass scan, the saved columnar index
    errors, atomic, heap, progress, testhook: small leaves every layer may use

`pyproject.toml`'s import-linter contract holds this order; `scripts/test` checks it.
"""

__version__ = "0.1.0"
