"""fusebundle: LinuxKit-style container bundles as a read-only FUSE tree or one tarball."""

__version__ = "0.1.0"
