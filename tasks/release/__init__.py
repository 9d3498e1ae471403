"""The release: an approved model becomes a bento, and the bento becomes what serves.

`package` builds and exports bentos, `serving` runs the blue/green slots, `health` judges a slot
(readiness, smoke test, watch), `rollout` puts a bento into service on the configured backend
and back again, `releases` records what serves and every attempt, `image` and `kubernetes` are
the container and cluster backends, `traffic` replays rows to the service, `promotion` finds an
approved candidate, and `promote_steps` holds the Prefect tasks the promote flow wires.
"""
