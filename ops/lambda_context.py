"""A Lambda context object for invoking handlers outside Lambda (local API, tests)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


@dataclass
class LocalLambdaContext:
    """What handlers and Powertools read from a Lambda context, with a real deadline."""

    function_name: str = "local-function"
    timeout_seconds: float = 30.0
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    region: str = "eu-west-1"
    account_id: str = "123456789012"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.invoked()

    def invoked(self) -> LocalLambdaContext:
        """The invocation starts now: its deadline is the timeout from here (Lambda's runtime builds a context as it
        invokes; one built ahead of time, as a benchmark does, is started by this)."""
        self._deadline = time.monotonic() + self.timeout_seconds
        return self

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
