"""boto3 clients for the AWS services a run talks to besides S3 (Lambda, CloudWatch).

boto3 raises ``NoRegionError`` when a client is made without a region, before any request: on a machine without
``~/.aws/config`` that would be a traceback at the start of a run. Here it is one line saying what to set.
"""

from __future__ import annotations

from typing import Any

from imgvec.errors import UsageError


def aws_client(service: str, *, flag: str, **options: Any) -> Any:
    """``boto3.client(service, **options)``; ``flag``: what the user asked for that needs it, for the message."""
    import boto3
    from botocore.exceptions import NoRegionError

    try:
        return boto3.session.Session().client(service, **options)
    except NoRegionError:
        raise UsageError(f"{flag} needs an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)") from None
