"""Live state: the policy in force across a fleet, changed at run time through the admin API
(docs/admin-api.md).

- `redis_connect`: every Redis client the gateway makes (standalone, Sentinel, Cluster).
- `store`: where the live state is kept (this process, or Redis). `state`: one replica's mirror of it.
- `overlay`: suspensions and organization overrides on top of the bundle.
- `control`, `proposals`, `access_delta`, `key_changes`: change control (tightening now, loosening by two).
- `heartbeat`: each replica's policy version and last hour in Redis, for the console's view of the fleet.
"""
