"""The payment backend's shared package, shipped to every function as a Lambda layer."""
