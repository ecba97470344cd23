"""The payment backend's shared package, shipped to every function as a Lambda layer."""

import gc
import logging

# botocore logs whole request and response bodies at DEBUG, Secrets Manager values included.
# Whatever LOG_LEVEL says, those loggers stay at WARNING wherever this package is loaded.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# What was imported before this package (Powertools, boto3, pydantic, pg8000: most of a cold start's objects) lives
# as long as the execution environment. Frozen, the garbage collector no longer walks it on every full collection:
# one during the rest of the cold start, or during a request, costs a fraction. (Cyclic garbage those imports left
# uncollected stays, a few kilobytes at most.)
gc.freeze()
