"""Image loading under limits: the address guard, data: URLs and fetching from a local server.

No engine here. Refused addresses are refused before any connection is made, so nothing but
the loopback image server is ever contacted.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import replace

import pytest

from server.images import ImageError, ImageLimits, ImageLoader, address_allowed, parse_networks
from tests.gateway_fixtures import MAX_IMAGE_BYTES, data_url, png_bytes

LIMITS = ImageLimits(
    max_bytes=MAX_IMAGE_BYTES,
    max_pixels=600 * 600,
    timeout_s=1.0,
    max_redirects=1,
    allowed_networks=parse_networks(["127.0.0.1/32"]),
    allow_public=False,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "::1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "fd00::1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address):
    assert not address_allowed(ip(address), ImageLimits())


def test_public_addresses_are_allowed_by_default_but_not_when_public_is_off():
    assert address_allowed(ip("93.184.215.14"), ImageLimits())
    assert not address_allowed(ip("93.184.215.14"), ImageLimits(allow_public=False))


def test_an_allowed_network_opens_exactly_its_addresses():
    limits = ImageLimits(allowed_networks=parse_networks(["127.0.0.1/32", "10.1.0.0/16"]))
    assert address_allowed(ip("127.0.0.1"), limits)
    assert address_allowed(ip("::ffff:127.0.0.1"), limits)
    assert address_allowed(ip("10.1.200.3"), limits)
    assert not address_allowed(ip("127.0.0.2"), limits)
    assert not address_allowed(ip("10.2.0.1"), limits)


@pytest.fixture
async def loader():
    """`loader(limits=LIMITS) -> ImageLoader`, each closed after the test."""
    made: list[ImageLoader] = []

    def make(limits: ImageLimits = LIMITS) -> ImageLoader:
        made.append(ImageLoader(limits))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


async def load_error(image_loader: ImageLoader, url: str) -> ImageError:
    with pytest.raises(ImageError) as caught:
        await image_loader.load(url)
    return caught.value


async def test_data_url_decodes_to_the_same_pixels(loader):
    from crop_vllm.testing.photos import picture

    image = picture(40)
    loaded = await loader().load(data_url(image))
    assert loaded.size == image.size
    assert loaded.pixels().tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "unsupported_image_type"),
        ("data:image/png;base64,%%%", "invalid_image_url"),
        ("data:image/png;base64", "invalid_image_url"),
        ("ftp://127.0.0.1/x.png", "unsupported_image_url"),
        ("http://user:secret@127.0.0.1/x.png", "unsupported_image_url"),
        ("http://10.0.0.1/x.png", "image_url_blocked"),
        ("http://169.254.169.254/latest/meta-data/", "image_url_blocked"),
        ("http://[::1]:9/x.png", "image_url_blocked"),
    ],
)
async def test_unusable_urls_are_refused_with_a_code(url, code, loader):
    assert (await load_error(loader(), url)).code == code


async def test_a_data_url_over_the_byte_limit_is_refused_before_decoding(loader):
    payload = base64.b64encode(b"\0" * (MAX_IMAGE_BYTES + 1)).decode()
    error = await load_error(loader(), "data:image/png;base64," + payload)
    assert error.code == "image_too_large"


async def test_fetches_from_the_allowed_server(image_server, loader):
    image = await loader().load(image_server.url + "/small.png")
    assert image.pixels().tobytes() == image_server.images["small"].tobytes()


async def test_one_redirect_is_followed_within_the_allowed_network(image_server, loader):
    target = image_server.url + "/small.png"
    image = await loader().load(f"{image_server.url}/redirect?to={target}")
    assert image.size == image_server.images["small"].size


async def test_redirects_beyond_the_limit_are_refused(image_server, loader):
    inner = f"{image_server.url}/redirect?to={image_server.url}/small.png"
    error = await load_error(loader(), f"{image_server.url}/redirect?to={inner}")
    assert error.code == "image_fetch_failed"
    assert "redirected more than 1" in error.message


async def test_each_redirect_is_checked_against_the_guard(image_server, loader):
    error = await load_error(loader(), f"{image_server.url}/redirect?to=http://127.0.0.2:9/x.png")
    assert error.code == "image_url_blocked"


async def test_a_host_name_is_checked_by_what_it_resolves_to(image_server, loader):
    port = image_server.url.rsplit(":", 1)[1]
    error = await load_error(
        loader(replace(LIMITS, allowed_networks=())), f"http://localhost:{port}/small.png"
    )
    assert error.code == "image_url_blocked"


async def test_a_host_name_is_fetched_from_its_checked_address(image_server, loader):
    port = image_server.url.rsplit(":", 1)[1]
    limits = replace(LIMITS, allowed_networks=parse_networks(["127.0.0.0/8", "::1/128"]))
    image = await loader(limits).load(f"http://localhost:{port}/small.png")
    assert image.size == image_server.images["small"].size


async def test_a_slow_server_times_out(image_server, loader):
    error = await load_error(loader(), image_server.url + "/slow")
    assert error.code == "image_fetch_timeout"


async def test_fetching_can_be_disabled_for_data_urls_only(image_server, loader):
    only_data = loader(replace(LIMITS, fetch_urls=False))
    assert (await load_error(only_data, image_server.url + "/small.png")).code == (
        "image_url_fetch_disabled"
    )
    assert (await only_data.load(data_url(image_server.images["small"]))).size == (224, 160)


async def test_too_many_pixels_are_refused_even_when_the_file_is_small(image_server, loader):
    assert len(png_bytes(image_server.images["huge"])) < MAX_IMAGE_BYTES
    error = await load_error(loader(), image_server.url + "/huge.png")
    assert error.code == "image_too_large"
