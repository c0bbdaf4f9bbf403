"""The request path: what runs for every request on the public listener, in the order
`app.Gateway.process` calls it (docs/policy.md).

- `listener`: the HTTP/1.1 protocol and its limits on what one client may cost.
- `app`: the ASGI application: route -> identity -> model -> place -> decide -> quota -> forward -> audit.
- `routing`, `body`, `body_models`: which API a request is for, and the models its body names.
- `decisions`: decisions already made, reused until the policy or its next breakpoint changes them.
- `clientip`: the client's address (X-Forwarded-For behind a trusted proxy).
- `quota`, `usage`, `misuse`: per-organization limits, token counts, one credential in many countries.
- `proxy`, `pool`, `header_names`: forwarding to the upstreams, and header hygiene.
- `catalogue`: the model list a caller may see. `responses`: denials in the caller's API shape.
- `revocation`: ending allowed streams a policy change now denies. `traced`: the path with spans.
- `activity`: requests and denials of the last hour per minute and place, for the console.
"""
