"""Pure tables: image reference parsing (Docker's naming rules), challenges, transport."""

from __future__ import annotations

import pytest

from hub.imageref import (
    Challenge,
    ImageRef,
    InvalidReference,
    api_host,
    auth_host,
    parse_challenge,
    parse_reference,
    uses_plain_http,
)

DIGEST = "sha256:" + "ab" * 32

PARSE = [
    # text, registry, repository, tag, digest
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("library/nginx:1", "docker.io", "library/nginx", "1", None),
    ("grafana/grafana:10.0", "docker.io", "grafana/grafana", "10.0", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/nginx:2", "docker.io", "library/nginx", "2", None),
    ("registry-1.docker.io/x/y", "docker.io", "x/y", "latest", None),
    ("127.0.0.1:5000/edgefleet/good:1", "127.0.0.1:5000", "edgefleet/good", "1", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app:v2", "localhost:5000", "app", "v2", None),
    ("ghcr.io/org/sub/app:1.2.3-rc_1", "ghcr.io", "org/sub/app", "1.2.3-rc_1", None),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
    (f"nginx@{DIGEST}", "docker.io", "library/nginx", None, DIGEST),
    (f"nginx:1.25@{DIGEST}", "docker.io", "library/nginx", "1.25", DIGEST),
    (f"127.0.0.1:5000/a/b@{DIGEST}", "127.0.0.1:5000", "a/b", None, DIGEST),
    ("my-registry:5000/app", "my-registry:5000", "app", "latest", None),
    ("foo_bar/baz", "docker.io", "foo_bar/baz", "latest", None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), PARSE)
def test_parse_reference(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


BAD = [
    ("", "empty"),
    ("Nginx", "repository"),
    ("nginx:", "tag"),
    ("nginx:bad tag", "tag"),
    ("nginx:" + "t" * 129, "tag"),
    ("nginx@sha256:123", "digest"),
    ("nginx@md5:" + "ab" * 16, "digest"),
    ("a//b", "repository"),
    ("/nginx", "repository"),
    ("nginx/", "repository"),
    ("a/b-/c", "repository"),
    ("host:99999/app", "registry"),
    ("UPPER.example.com:x/app", "registry"),
    ("a.b__c/e", "registry"),  # a dot makes it a host, and "_" is no host character
    ("x" * 300, "longer than"),
]


@pytest.mark.parametrize(("text", "words"), BAD)
def test_bad_reference_is_refused_naming_the_part(text, words):
    with pytest.raises(InvalidReference) as exc:
        parse_reference(text)
    assert words in str(exc.value)


PINNED = [
    ("nginx", "docker.io/library/nginx@" + DIGEST),
    ("127.0.0.1:5000/edgefleet/good:1", "127.0.0.1:5000/edgefleet/good@" + DIGEST),
    ("ghcr.io/o/a:1@" + DIGEST, "ghcr.io/o/a@" + DIGEST),
]


@pytest.mark.parametrize(("text", "pinned"), PINNED)
def test_pinned_form_drops_the_tag_and_names_the_registry(text, pinned):
    assert parse_reference(text).pinned(DIGEST) == pinned


def test_api_and_auth_hosts_follow_docker_hub_naming():
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"
    for server in ("docker.io", "index.docker.io", "https://index.docker.io/v1/"):
        assert auth_host(server) == "docker.io"
    assert auth_host("http://127.0.0.1:5001/") == "127.0.0.1:5001"
    assert auth_host("127.0.0.1:5001") == "127.0.0.1:5001"


PLAIN = [
    ("127.0.0.1:5000", (), True),
    ("127.5.6.7", (), True),
    ("localhost:5000", (), True),
    ("localhost", (), True),
    ("[::1]:5000", (), True),
    ("registry.lan:5000", ("registry.lan:5000",), True),
    ("registry.lan:5000", ("registry.lan",), False),  # as Docker: host:port as listed
    ("registry.lan", ("registry.lan",), True),
    ("10.0.0.5:5000", ("10.0.0.0/8",), True),  # CIDR, as Docker's insecure-registries
    ("docker.io", (), False),
    ("ghcr.io", ("registry.lan",), False),
]


@pytest.mark.parametrize(("registry", "insecure", "plain"), PLAIN)
def test_plain_http_only_for_loopback_and_listed_registries(registry, insecure, plain):
    assert uses_plain_http(registry, insecure) is plain


CHALLENGES = [
    ('Basic realm="edgefleet-test"', Challenge("basic", {"realm": "edgefleet-test"})),
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"',
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/nginx:pull",
            },
        ),
    ),
    (
        'bearer realm="https://ghcr.io/token", service="ghcr.io",scope="repository:a/b:pull,push"',
        Challenge(
            "bearer",
            {
                "realm": "https://ghcr.io/token",
                "service": "ghcr.io",
                "scope": "repository:a/b:pull,push",
            },
        ),
    ),
    ("Bearer realm=https://x/token", Challenge("bearer", {"realm": "https://x/token"})),
    ('Bearer realm="a\\"b"', Challenge("bearer", {"realm": 'a"b'})),
]


@pytest.mark.parametrize(("header", "challenge"), CHALLENGES)
def test_parse_challenge(header, challenge):
    assert parse_challenge(header) == challenge


@pytest.mark.parametrize("header", ["", "Negotiate", "Bearer", 'Bearer service="x"', "Digest x"])
def test_unusable_challenge_is_none(header):
    assert parse_challenge(header) is None


def test_image_ref_is_plain_data():
    ref = ImageRef("docker.io", "library/nginx", "latest", None)
    assert ref.reference == "latest" and str(ref) == "docker.io/library/nginx:latest"
    pinned = ImageRef("docker.io", "library/nginx", None, DIGEST)
    assert pinned.reference == DIGEST and str(pinned) == "docker.io/library/nginx@" + DIGEST
