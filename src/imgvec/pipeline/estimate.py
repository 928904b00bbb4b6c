"""`imgvec estimate`: what a big run will take, in hours and money, before it starts.

Two predictions from one streaming count (``plan``): this machine, from a calibration run of the real pipeline on
a random sample; and a per-image-time model (AWS Lambda and the like), where each image costs a fixed number of
seconds at a memory size and the bill is GB-seconds plus requests. The per-image time defaults to what this
machine measured per core; the seed's Lambda plan budgeted 0.5-2 s, and ``--lambda-seconds-per-image`` says
what the real function takes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgvec.pipeline.plan import Plan

LAMBDA_PRICE_GB_SECOND = 0.0000166667
"""us-east-1, x86, first pricing tier (2026 list price)."""
LAMBDA_PRICE_PER_MILLION_REQUESTS = 0.20
S3_GET_PRICE_PER_THOUSAND = 0.0004
"""S3 Standard GET, us-east-1: each image of an s3:// source is read once."""


@dataclass(frozen=True, slots=True)
class PerImageModel:
    """A serverless function: each invocation embeds ``images_per_request`` images, ``seconds_per_image`` each."""

    seconds_per_image: float | None = None
    """None: this machine's measured core-seconds per image."""
    memory_gb: float = 2.0
    price_gb_second: float = LAMBDA_PRICE_GB_SECOND
    price_per_million_requests: float = LAMBDA_PRICE_PER_MILLION_REQUESTS
    images_per_request: int = 1
    concurrency: int = 100


@dataclass(slots=True)
class Estimate:
    plan: Plan
    cores: int
    machine_seconds: float | None
    machine_cost: float | None
    per_image_seconds: float | None
    per_image_basis: str
    serverless_seconds: float | None
    serverless_compute_cost: float | None
    serverless_request_cost: float | None
    s3_get_cost: float | None

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["plan"] = self.plan.as_dict()
        return result


def estimate(
    plan: Plan,
    *,
    cores: int,
    price_per_hour: float | None = None,
    serverless: PerImageModel | None = None,
    s3_source: bool = False,
) -> Estimate:
    serverless = serverless or PerImageModel()
    images = plan.would_process
    rate = plan.images_per_second
    machine_seconds = images / rate if rate else None
    machine_cost = machine_seconds / 3600 * price_per_hour if machine_seconds is not None and price_per_hour else None
    if serverless.seconds_per_image is not None:
        per_image, basis = serverless.seconds_per_image, "given"
    elif plan.function_seconds_per_image is not None:
        per_image = plan.function_seconds_per_image
        basis = f"measured through the Lambda function on {plan.calibration_files} images"
    elif rate:
        per_image, basis = cores / rate, f"measured here ({cores} cores / {rate:.2f} images/s)"
    else:
        per_image, basis = None, "unknown"
    compute = requests = wall = None
    if per_image is not None:
        compute = images * per_image * serverless.memory_gb * serverless.price_gb_second
        requests = math.ceil(images / serverless.images_per_request) * serverless.price_per_million_requests / 1e6
        wall = images * per_image / serverless.concurrency
    return Estimate(
        plan=plan,
        cores=cores,
        machine_seconds=machine_seconds,
        machine_cost=machine_cost,
        per_image_seconds=per_image,
        per_image_basis=basis,
        serverless_seconds=wall,
        serverless_compute_cost=compute,
        serverless_request_cost=requests,
        s3_get_cost=images / 1000 * S3_GET_PRICE_PER_THOUSAND if s3_source else None,
    )
