"""Inner-LLM pruning (ILP): from decoder layer K on, the visual tokens outside a request's region
are dropped, inside vLLM's scheduler and paged KV cache.

- `plan`: pure math (dropped prompt positions, per-step compaction);
- `patches.runner`: the runner patch that rebuilds attention metadata for the kept tokens;
- `decoder`: the hooks that run layers >= K on the kept rows;
- `startup`: the refusal of engine settings ILP cannot run under.
"""
