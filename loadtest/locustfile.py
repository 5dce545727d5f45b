"""A multimodal chat workload for the CROP gateway, one user class per CROP mode.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 16 -r 4 -t 2m --csv results/run AutoUser OffUser

Each user asks questions that name objects about photo-like JPEG images of mixed sizes (one or
two images), follows up on an image turn with a text-only turn, and chats without images; about
half of the requests stream. Every other image request carries a client region (the rest leave
the region to the server's localizer), so a mode's savings show even when the localizer finds
nothing. The user class picks the `crop.mode`: AutoUser (the server's default pruning), OffUser,
PlcUser, IlpUser, PlcIlpUser (the last two need an ILP-capable server).

Besides locust's own statistics, the run records CROP's accounting from `usage.crop` per user
class (visual tokens full / after PLC / after ILP / saved, time to first token) and, with
`--csv PREFIX`, writes it to PREFIX_crop.csv and PREFIX_crop.json; it is also printed at the
end. Works with `--processes` and distributed runs: workers send their share to the master.
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from crop_vllm.testing.photos import photo_jpeg
from server.sse import chunks

logger = logging.getLogger("crop.locust")

#: Questions that name objects the localizer knows; {0} is replaced by an object name.
QUESTIONS = (
    "What color is the {0}?",
    "Where is the {0} in this picture?",
    "Is there a {0} next to the person?",
    "How many {0}s can you see?",
    "Describe the {0} on the left.",
)
OBJECTS = ("dog", "car", "cup", "bicycle", "chair", "umbrella", "laptop", "bus", "cat", "bottle")
FOLLOW_UPS = ("And what is behind it?", "Why do you think so?", "Summarize that in one word.")
TEXT_ONLY = (
    "Write a haiku about traffic.",
    "Explain what a KV cache is in one sentence.",
    "List three uses of object detection.",
)
#: Client regions: normalized [x0, y0, x1, y1] quarters and halves of the image.
REGIONS = ([0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.25, 0.0, 0.75, 0.5], [0.0, 0.5, 0.5, 1.0])


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("CROP workload")
    group.add_argument("--crop-model", default="", help="model name (default: the first served)")
    group.add_argument("--crop-api-key", default="", env_var="CROP_API_KEY", help="Bearer key")
    group.add_argument("--crop-max-tokens", type=int, default=64, help="max_tokens per request")
    group.add_argument(
        "--crop-image-sizes",
        default="640x480,1024x768,1344x1008",
        help="comma-separated WxH sizes the images are drawn from",
    )
    group.add_argument("--crop-stream-share", type=float, default=0.5, help="share that stream")
    group.add_argument("--crop-seed", type=int, default=0, help="seed of the workload choices")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'640x480,1024x768' -> [(640, 480), (1024, 768)]."""
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


@cache
def image_data_url(width: int, height: int, variant: int) -> str:
    """A photo-like JPEG as a data: URL, built once each."""
    jpeg = photo_jpeg(variant * 7919 + width * 31 + height, width, height, quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


# --------------------------------------------------------------------------------------------
# CROP accounting per user class (the custom metrics)
# --------------------------------------------------------------------------------------------


@dataclass
class CropTally:
    """What `usage.crop` reported for one user class; additive across workers. TTFT comes
    from streamed requests only."""

    requests: int = 0
    image_requests: int = 0
    images: int = 0
    pruned_images: int = 0
    visual_tokens_full: int = 0
    visual_tokens_after_plc: int = 0
    visual_tokens_after_ilp: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    localizer_seconds: float = 0.0
    ttft_seconds: list[float] = field(default_factory=list)

    @property
    def visual_tokens_saved(self) -> int:
        return self.visual_tokens_full - self.visual_tokens_after_ilp

    def add(self, other: CropTally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict[str, float | int]:
        ttft = np.asarray(self.ttft_seconds or [np.nan])
        row = {k: v for k, v in asdict(self).items() if k != "ttft_seconds"}
        return {
            **row,
            "visual_tokens_saved": self.visual_tokens_saved,
            "saved_fraction": self.visual_tokens_saved / self.visual_tokens_full
            if self.visual_tokens_full
            else 0.0,
            "ttft_p50_s": float(np.nanpercentile(ttft, 50)),
            "ttft_p99_s": float(np.nanpercentile(ttft, 99)),
        }


tallies: dict[str, CropTally] = defaultdict(CropTally)


@events.report_to_master.add_listener
def _send_tallies(client_id: str, data: dict[str, Any]) -> None:
    data["crop_tallies"] = {name: asdict(t) for name, t in tallies.items()}
    tallies.clear()


@events.worker_report.add_listener
def _receive_tallies(client_id: str, data: dict[str, Any]) -> None:
    for name, values in data.get("crop_tallies", {}).items():
        tallies[name].add(CropTally(**values))


@events.quitting.add_listener
def _write_summary(environment: Environment, **_: Any) -> None:
    if environment.runner is None or isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) writes the merged summary
    rows = {name: tally.summary() for name, tally in sorted(tallies.items())}
    for name, row in rows.items():
        logger.info(
            "%s: %d requests, %d images, visual tokens %d -> %d (saved %d, %.0f%%), TTFT p50 "
            "%.3f s",
            name,
            row["requests"],
            row["images"],
            row["visual_tokens_full"],
            row["visual_tokens_after_ilp"],
            row["visual_tokens_saved"],
            100 * row["saved_fraction"],
            row["ttft_p50_s"],
        )
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if not prefix or not rows:
        return
    Path(f"{prefix}_crop.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(f"{prefix}_crop.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["user_class", *next(iter(rows.values()))])
        writer.writeheader()
        for name, row in rows.items():
            writer.writerow({"user_class": name, **row})


# --------------------------------------------------------------------------------------------
# The users
# --------------------------------------------------------------------------------------------


class CropChatUser(HttpUser):
    """Chats through the gateway with one CROP mode; subclasses set `crop_mode`."""

    abstract = True
    crop_mode = "auto"
    wait_time = between(0.2, 1.0)
    _user_ids = itertools.count()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random(options.crop_seed * 100_003 + next(self._user_ids))
        self.sizes = parse_sizes(options.crop_image_sizes)
        self.max_tokens = options.crop_max_tokens
        self.stream_share = options.crop_stream_share
        self.headers = {"Authorization": f"Bearer {options.crop_api_key}"}
        self.model = options.crop_model or self._first_model()
        self.image_requests = 0

    def _first_model(self) -> str:
        response = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    # -- building requests ------------------------------------------------------------------

    def _image_turn(self, count: int) -> tuple[dict[str, Any], list[list[float] | None]]:
        """A user message with `count` images and an object question, plus its client regions:
        every other image request names a region for each image, the rest leave it to the
        localizer (null)."""
        self.image_requests += 1
        with_regions = self.image_requests % 2 == 1
        content: list[dict[str, Any]] = []
        regions: list[list[float] | None] = []
        for _ in range(count):
            width, height = self.rng.choice(self.sizes)
            url = image_data_url(width, height, self.rng.randrange(4))
            content.append({"type": "image_url", "image_url": {"url": url}})
            regions.append(self.rng.choice(REGIONS) if with_regions else None)
        question = self.rng.choice(QUESTIONS).format(self.rng.choice(OBJECTS))
        content.append({"type": "text", "text": question})
        return {"role": "user", "content": content}, regions

    def _body(self, messages: list[dict[str, Any]], regions: list[list[float] | None]) -> dict:
        stream = self.rng.random() < self.stream_share
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.7,
            "stream": stream,
            "crop": {"mode": self.crop_mode},
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if regions and any(r is not None for r in regions) and self.crop_mode != "off":
            body["crop"]["regions"] = regions
        return body

    # -- the tasks ---------------------------------------------------------------------------

    @task(5)
    def one_image(self) -> None:
        message, regions = self._image_turn(1)
        self._chat("image", [message], regions)

    @task(1)
    def two_images(self) -> None:
        message, regions = self._image_turn(2)
        self._chat("two images", [message], regions)

    @task(2)
    def image_then_text(self) -> None:
        """A follow-up turn: the image stays in the history, the new question is text only."""
        message, regions = self._image_turn(1)
        history = [
            message,
            {"role": "assistant", "content": "It looks like a small object near the edge."},
            {"role": "user", "content": self.rng.choice(FOLLOW_UPS)},
        ]
        self._chat("follow-up", history, regions)

    @task(2)
    def text_only(self) -> None:
        messages = [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": self.rng.choice(TEXT_ONLY)},
        ]
        self._chat("text only", messages, [])

    # -- sending and accounting --------------------------------------------------------------

    def _chat(self, kind: str, messages: list[dict[str, Any]], regions: list) -> None:
        body = self._body(messages, regions)
        name = f"{kind} ({'stream' if body['stream'] else 'whole'})"
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name=name,
            stream=body["stream"],
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:300]}")
                return
            try:
                if body["stream"]:
                    usage, ttft = self._read_stream(response, started)
                else:  # the first token is not observable without streaming
                    usage, ttft = response.json()["usage"], None
            except (ValueError, KeyError) as exc:
                response.failure(f"malformed response: {exc}")
                return
            if usage is None or "crop" not in usage:
                response.failure("no usage.crop in the response")
                return
            response.success()
        self._tally(usage, ttft)

    @staticmethod
    def _read_stream(response: Any, started: float) -> tuple[dict | None, float | None]:
        """Reads the SSE stream; returns the final usage and the time to the first token."""
        usage, ttft = None, None
        for chunk in chunks(response.iter_lines()):
            if "error" in chunk:
                raise ValueError(f"error event: {chunk['error']}")
            if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
        return usage, ttft

    def _tally(self, usage: dict[str, Any], ttft: float | None) -> None:
        crop = usage["crop"]
        tally = tallies[type(self).__name__]
        tally.requests += 1
        tally.image_requests += bool(crop["images"])
        tally.images += len(crop["images"])
        tally.pruned_images += sum(i["region"] is not None for i in crop["images"])
        tally.visual_tokens_full += crop["visual_tokens_full"]
        tally.visual_tokens_after_plc += crop["visual_tokens_after_plc"]
        tally.visual_tokens_after_ilp += crop["visual_tokens_after_ilp"]
        tally.prompt_tokens += usage["prompt_tokens"]
        tally.completion_tokens += usage["completion_tokens"]
        tally.localizer_seconds += crop["localizer_seconds"]
        if ttft is not None:
            tally.ttft_seconds.append(ttft)


class AutoUser(CropChatUser):
    """The server's default pruning, on client or localizer regions."""

    crop_mode = "auto"


class OffUser(CropChatUser):
    """No pruning and no localizer: the baseline."""

    crop_mode = "off"


class PlcUser(CropChatUser):
    crop_mode = "plc"


class IlpUser(CropChatUser):
    crop_mode = "ilp"


class PlcIlpUser(CropChatUser):
    crop_mode = "plc+ilp"
