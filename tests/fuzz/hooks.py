"""Schemathesis hooks for the Hivemind REST API fuzz run (tests/tests/rest.rs, rest_fuzz_*).

503 is how the API says a dependency is down (an image registry the fuzzer's random image
names point to cannot be reached from the test namespace), so the check here is "no 500":
an internal fault is always a bug.
"""
import schemathesis


@schemathesis.check
def no_internal_error(ctx, response, case):
    if response.status_code == 500:
        raise AssertionError(f"500 Internal Server Error: {response.text[:500]}")
