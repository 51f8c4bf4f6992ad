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


@schemathesis.hook
def map_query(ctx, query):
    # `follow=true` keeps a log response open until the client hangs up: not a fuzz target.
    if isinstance(query, dict) and str(query.get("follow")).lower() == "true":
        query["follow"] = "false"
    return query


@schemathesis.hook
def map_body(ctx, body):
    # Valid replica counts are up to 1000; starting that many containers is a load test, not a
    # fuzz case. Keep real scale-ups small (out-of-range values still go through unchanged).
    if isinstance(body, dict):
        replicas = body.get("replicas")
        if isinstance(replicas, int) and not isinstance(replicas, bool) and 3 < replicas <= 1000:
            body["replicas"] = 3
        # A stop signal the process ignores (SIGWINCH, SIGCONT, ...) makes every stop wait the
        # whole grace period, up to the 3600 s a request may ask for: a slow test, not a bug.
        # Keep valid grace periods short (out-of-range values still go through unchanged).
        grace = body.get("stop_timeout_secs")
        if isinstance(grace, int) and not isinstance(grace, bool) and 2 < grace <= 3600:
            body["stop_timeout_secs"] = 2
    return body


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # The coverage phase's boundary values bypass map_body: apply the same bounds to every
    # request just before it is sent.
    case.body = map_body(ctx, case.body)
    if isinstance(case.query, dict):
        case.query = map_query(ctx, case.query)
