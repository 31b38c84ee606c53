"""What the tests share: image builders (imagetools), hostile tars (tarcorpus), fault helpers
(faulttools), a registry for faults a real one cannot produce (fakeregistry), and a small
pyfuse3 file system for the patch tests (patchfs, run as a script), and the CLI run without an
engine, bounded in time and memory (offline)."""
