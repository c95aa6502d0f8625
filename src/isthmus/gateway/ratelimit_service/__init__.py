"""Kong's rate-limiting with ``policy: redis``: the rate-limit service each gateway agent runs next to its Envoy.

``windows`` (Kong's calendar-aligned windows and Redis keys), ``plan`` (what a route's descriptor carries and
the client identifier), ``counting`` (the Redis script and Kong's answer), ``server`` (the gRPC service on
Envoy's rate-limit API, its bootstrap cluster and :func:`server.serving` for the agent).
"""
