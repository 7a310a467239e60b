"""Engines that run `legend annotate`: `local` (one process, streamed in chunks) and `ray` (Ray Data).

Both call the same margin step (`legend.margins.compute_margins` / `compute_margins_multi` ->
`legend.encoding.encode`) and the same binning, so their outputs agree row for row.
"""

ENGINES = ("local", "ray")


def run_engine(engine: str, data, direction, out, model, settings, *, split="train", limit=None, num_workers=None,
               resume=True):
    """Run `legend.pipeline.annotate_file` (one direction, or a list of several) on the named engine.

    `resume` applies to the local engine; Ray re-runs its own failed tasks.
    """
    if engine == "local":
        from .local import annotate_file_streamed

        return annotate_file_streamed(data, direction, out, model, settings, split=split, limit=limit, resume=resume)
    if engine == "ray":
        from .ray_engine import annotate_file_ray

        return annotate_file_ray(data, direction, out, model, settings, split=split, limit=limit,
                                 num_workers=num_workers or 2)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
