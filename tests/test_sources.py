"""Engine-free image sources: references, manifests, OCI layouts and `docker save` archives.

The references are checked against a table of docker's own normalisations (distribution's
`reference` package tests: ParseNormalizedNamed, FamiliarString, String); the layouts and
archives are made by real tools (a private dockerd's `docker save`, `skopeo copy`).
"""

from __future__ import annotations

import pytest

from fusebundle.errors import UserError
from fusebundle.sources import reference

H = "86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
D = "sha256:" + H

# input -> (full name, familiar): what docker's reference package makes of them.
NORMALISED = [
    ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.13", "docker.io/library/alpine:3.13", "alpine:3.13"),
    ("docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("linuxkit/init:v1", "docker.io/linuxkit/init:v1", "linuxkit/init:v1"),
    ("fooo/bar", "docker.io/fooo/bar:latest", "fooo/bar:latest"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("localhost:5000/x:1", "localhost:5000/x:1", "localhost:5000/x:1"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("localhost", "docker.io/library/localhost:latest", "localhost:latest"),
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase:latest",
     "127.0.0.1:8000/private/moonbase:latest"),
    ("example.com/privatebase", "example.com/privatebase:latest",
     "example.com/privatebase:latest"),
    ("test-com:8080/foo", "test-com:8080/foo:latest", "test-com:8080/foo:latest"),
    ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080/foo:latest"),
    ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker:latest",
     "[fc00::1]:5000/docker/docker:latest"),
    ("dock__er/docker---rules", "docker.io/dock__er/docker---rules:latest",
     "dock__er/docker---rules:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:latest@{D}", f"docker.io/library/busybox:latest@{D}", f"busybox:latest@{D}"),
    (f"localhost:5000/a/b:v2@{D}", f"localhost:5000/a/b:v2@{D}", f"localhost:5000/a/b:v2@{D}"),
    ("a:Tag_1.x-y", "docker.io/library/a:Tag_1.x-y", "a:Tag_1.x-y"),
]

INVALID = [
    "", " alpine", "alpine ", "https://github.com/docker/docker", "docker/Docker",
    "docker.io/docker/Docker", "-docker", "-docker/docker", "docker-/docker", "docker///docker",
    "____/____", "_docker/_docker", "dock..er/docker", "dock_.er/docker", "dock-.er/docker",
    "docker/", "[fc00::1]", "fc00::1:5000/debian", "[fe80::1%eth0]:5000/debian", H,
    "alpine:", "alpine:-tag", "alpine:" + "t" * 129, "alpine@", "alpine@sha256:abc",
    f"alpine@sha256:{H.upper()}", f"alpine@sha256:{H}00", "alpine@:" + H,
    "a" * 250 + "/" + "b" * 10, "alpine:1:2", "ALPINE",
]


@pytest.mark.parametrize(("text", "full", "familiar"), NORMALISED)
def test_reference_normalised_as_docker_does(text: str, full: str, familiar: str) -> None:
    ref = reference.parse(text)
    assert ref.name == full
    assert ref.familiar == familiar
    # Normalisation is idempotent both ways: the full and the familiar form parse back to it.
    assert reference.parse(full) == ref
    assert reference.parse(familiar) == ref


def test_reference_fields() -> None:
    ref = reference.parse(f"localhost:5000/a/b:v2@{D}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "a/b", "v2", D)
    assert ref.repository == "localhost:5000/a/b"
    pinned = reference.parse(f"alpine@{D}")
    assert pinned.tag == ""  # no default tag beside a digest
    assert reference.parse("alpine").tag == "latest"
    assert reference.parse("alpine").repository == "docker.io/library/alpine"


@pytest.mark.parametrize("text", INVALID)
def test_reference_invalid_is_one_line(text: str) -> None:
    with pytest.raises(UserError) as exc:
        reference.parse(text)
    message = str(exc.value)
    assert message.startswith("invalid reference format: ")
    assert "\n" not in message


def test_reference_other_digest_algorithms_are_named_unsupported() -> None:
    text = "alpine@sha512:" + "ab" * 64
    with pytest.raises(UserError) as exc:
        reference.parse(text)
    assert "'sha512'" in str(exc.value) and "only sha256" in str(exc.value)
    assert "\n" not in str(exc.value)
    # A syntactically broken digest is a format error, not an unsupported algorithm.
    with pytest.raises(UserError, match="invalid reference format"):
        reference.parse("alpine@sha512:xyz")


def test_reference_normalise_helper() -> None:
    assert reference.normalise("alpine") == "docker.io/library/alpine:latest"
    assert reference.normalise("Not A Ref") is None
