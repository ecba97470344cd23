"""The payment backend's shared package, shipped to every function as a Lambda layer."""

import logging

# botocore logs whole request and response bodies at DEBUG, Secrets Manager values included.
# Whatever LOG_LEVEL says, those loggers stay at WARNING wherever this package is loaded.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)
