"""HedraRAG's techniques, one module each, composed by `ragraph.policies.hedra` and open to
reuse by other policies: sub-stages (`substages`), wavefronts (`wavefront`), similarity-aware
reordering (`reorder`), speculative generation (`spec_gen`) and the partial GPU index cache
(`gpu_cache`). Each works only through the `SchedulerView` it is handed."""
