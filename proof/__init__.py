"""The proof suite: `make prove` runs it against `make run`'s stack and writes docs/proof.md.

Each part (chaos, the contract fuzzer, the callback fuzzer, the saved-card and refund flows under faults)
takes a size; `make test` runs each at a small size (tests/proof), `make prove` at release size.
"""
