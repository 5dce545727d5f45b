"""Load a request's images from data: URLs or http(s) URLs, under limits, then decode them once.

Fetching a client-given URL from inside a data centre is a server-side request forgery risk, so
every host name is resolved here and *every* address it resolves to must be allowed; the
connection then goes to that checked address (the host name is kept for the Host header and TLS
SNI), so a second DNS answer cannot swap in another target. Redirects are followed by hand and
each hop is checked again. Private, loopback, link-local and other non-global addresses are
refused unless a configured network allows them. Decoding is `server.decoding`, the project's
one image decoder, so the localizer and the engine see the same pixels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urljoin, urlsplit, urlunsplit

import httpx

from server.decoding import ImageDecodeError, ImageTooLargeError, LoadedImage, load_image

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost. `allowed_networks` opens otherwise refused address ranges;
    `allow_public` False restricts fetching to those networks alone (useful for tests and
    closed deployments); `fetch_urls` False accepts data: URLs only."""

    max_bytes: int = field(
        default=20 * 1024 * 1024,
        metadata={"flag": "--max-image-bytes", "help": "largest image file"},
    )
    max_pixels: int = field(
        default=40_000_000,
        metadata={"flag": "--max-image-pixels", "help": "largest image (width x height)"},
    )
    timeout_s: float = field(
        default=10.0,
        metadata={
            "flag": "--image-fetch-timeout",
            "metavar": "SECONDS",
            "help": "longest fetch of an image URL",
        },
    )
    max_redirects: int = field(
        default=3,
        metadata={"flag": "--image-max-redirects", "help": "redirects followed per image URL"},
    )
    content_types: tuple[str, ...] = ("image/",)
    allowed_networks: tuple[IPNetwork, ...] = field(
        default=(),
        metadata={
            "flag": "--allow-image-network",
            "action": "append",
            "type": lambda cidr: ipaddress.ip_network(cidr, strict=False),
            "metavar": "CIDR",
            "help": "let image URLs reach this otherwise refused (private) network, repeatable",
        },
    )
    allow_public: bool = field(
        default=True,
        metadata={
            "flag": "--no-public-image-urls",
            "action": "store_false",
            "help": "fetch image URLs only from --allow-image-network networks",
        },
    )
    fetch_urls: bool = field(
        default=True,
        metadata={
            "flag": "--no-image-urls",
            "action": "store_false",
            "help": "accept data: URLs only",
        },
    )

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.timeout_s <= 0:
            raise ValueError("image limits must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")


class ImageError(Exception):
    """An image the gateway refuses; the message is safe to show to the client (HTTP 400)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses) from configuration, e.g. `127.0.0.1/32`, `10.0.0.0/8`."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def address_allowed(address: IPAddress, limits: ImageLimits) -> bool:
    """True when the gateway may connect to `address` to fetch an image."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in limits.allowed_networks):
        return True
    return limits.allow_public and address.is_global and not address.is_multicast


@dataclass
class _Target:
    """The URL to request (host replaced by a checked address) and the real host name."""

    url: str
    host_header: str
    sni_hostname: str | None = None


class ImageLoader:
    """Turns `image_url.url` strings into `LoadedImage`s (header checked, limits applied)."""

    def __init__(self, limits: ImageLimits, client: httpx.AsyncClient | None = None) -> None:
        self.limits = limits
        self._client = client or httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=limits.timeout_s
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def load(self, url: str) -> LoadedImage:
        data = await self.fetch_bytes(url)
        data_url = url if url[:5].lower() == "data:" else None
        try:
            loaded = load_image(data, max_pixels=self.limits.max_pixels, data_url=data_url)
            if loaded.source is None:  # converted: decode now, so a damaged image fails here
                await asyncio.to_thread(loaded.pixels)
            return loaded
        except ImageTooLargeError as exc:
            raise ImageError(str(exc), "image_too_large") from None
        except ImageDecodeError as exc:
            raise ImageError(str(exc), "invalid_image") from None

    async def fetch_bytes(self, url: str) -> bytes:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return self._data_url(url)
        if scheme not in ("http", "https"):
            raise ImageError(
                "image_url must be a data: URL or an http(s) URL", "unsupported_image_url"
            )
        if not self.limits.fetch_urls:
            raise ImageError(
                "this server accepts images as data: URLs only", "image_url_fetch_disabled"
            )
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise ImageError(
                f"fetching the image took longer than {self.limits.timeout_s:g} s",
                "image_fetch_timeout",
            ) from None

    def _data_url(self, url: str) -> bytes:
        header, sep, payload = url[5:].partition(",")
        if not sep:
            raise ImageError("malformed data: URL (no comma)", "invalid_image_url")
        media_type, *params = header.split(";")
        self._check_content_type(media_type or "text/plain")
        is_base64 = "base64" in (p.strip().lower() for p in params)
        # Base64 inflates by 4/3: refuse early, before decoding anything.
        if len(payload) > self.limits.max_bytes * 4 // 3 + 4:
            raise self._too_large()
        try:
            data = (
                base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
            )
        except (binascii.Error, ValueError):
            raise ImageError("the data: URL holds invalid base64", "invalid_image_url") from None
        if len(data) > self.limits.max_bytes:
            raise self._too_large()
        return data

    async def _fetch(self, url: str) -> bytes:
        for _hop in range(self.limits.max_redirects + 1):
            response = await self._connect(await self._resolve(url))
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageError("redirect without a Location", "image_fetch_failed")
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise ImageError(
                        f"the image URL answered HTTP {response.status_code}", "image_fetch_failed"
                    )
                self._check_content_type(response.headers.get("content-type", ""))
                return await self._read_limited(response)
            finally:
                await response.aclose()
        raise ImageError(
            f"the image URL redirected more than {self.limits.max_redirects} time(s)",
            "image_fetch_failed",
        )

    async def _connect(self, targets: list[_Target]) -> httpx.Response:
        """GET the first of the checked addresses that accepts a connection."""
        failure: httpx.HTTPError | None = None
        for target in targets:
            request = self._client.build_request(
                "GET", target.url, headers={"Host": target.host_header}
            )
            if target.sni_hostname:
                request.extensions["sni_hostname"] = target.sni_hostname
            try:
                return await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                failure = exc
                if not isinstance(exc, httpx.ConnectError):
                    break
        raise ImageError(
            f"could not fetch the image: {type(failure).__name__}", "image_fetch_failed"
        )

    async def _resolve(self, url: str) -> list[_Target]:
        """Check the URL's host (every address it resolves to); one pinned target per address."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise ImageError(f"cannot fetch {parts.scheme or 'this'} URL", "unsupported_image_url")
        if parts.username or parts.password:
            raise ImageError("image URLs must not carry credentials", "unsupported_image_url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageError("the image URL has an invalid port", "invalid_image_url") from None
        addresses = await self._addresses(host, port)
        blocked = [a for a in addresses if not address_allowed(a, self.limits)]
        if blocked:
            raise ImageError(
                f"fetching images from {host} is not allowed (it resolves to a private, "
                "loopback, link-local or otherwise non-public address)",
                "image_url_blocked",
            )
        host_header = parts.netloc.rpartition("@")[2]
        sni = host if parts.scheme == "https" and not _is_ip(host) else None
        targets = []
        for address in addresses:
            netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            targets.append(_Target(pinned, host_header, sni))
        return targets

    @staticmethod
    async def _addresses(host: str, port: int) -> list[IPAddress]:
        if _is_ip(host):
            return [ipaddress.ip_address(host)]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            raise ImageError(
                f"cannot resolve the image host {host}", "image_fetch_failed"
            ) from None
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ImageError(f"cannot resolve the image host {host}", "image_fetch_failed")
        return addresses

    def _check_content_type(self, content_type: str) -> None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if not any(media_type.startswith(prefix) for prefix in self.limits.content_types):
            raise ImageError(
                f"the image has content type {media_type or 'none'!r}; expected "
                + " or ".join(f"{p}*" for p in self.limits.content_types),
                "unsupported_image_type",
            )

    async def _read_limited(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.limits.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> ImageError:
        return ImageError(
            f"the image is larger than the limit of {self.limits.max_bytes} bytes",
            "image_too_large",
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
