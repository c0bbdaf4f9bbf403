"""Policy: the bundle an operator writes, and the pure decision core that reads it (docs/policy.md).

- `schema`, `yamlsource`, `issues`, `load`: policy files read, validated and compiled into a `snapshot`.
- `decision`: `decide(policy, facts, now)`, no I/O and no clock; `reasons`: its closed vocabulary.
- `countries`: ISO 3166 codes and names. `provenance`: which legal list put a place in a group.
- `explain`, `timeline`: an account of one decision, and of one model's release stages.
- `diff`, `simulate`, `prove`: two bundles compared, replayed over recorded requests, assertions proved.
"""
