"""fermodels: FER model registry, the seed models, losses, trainer and evaluator."""
import os

# A float batch at 224 px is 38 MB: every such CPU tensor comes from freshly mapped pages, and
# faulting them in 4 kB at a time made the CPU augmentation path allocation-bound. With this
# set, torch backs its CPU allocations of 2 MB and more with transparent huge pages (read once, at
# torch's first CPU allocation of any size: import fermodels before making any tensor): 2x the
# samples/s of loader + CPU augmentation at 224 px (BENCHMARKS.md, Loader). THP_MEM_ALLOC_ENABLE=0
# opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__all__ = ["ModelCard", "create_model", "list_models", "register_model"]


def __getattr__(name: str):
    """The registry's names, imported on first use: ``import fermodels.cli`` (``fermodels --help``,
    ``fermodels crossval``) does not pay for importing torch."""
    if name in __all__:
        from fermodels import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'fermodels' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the registry's, which load on first use (tab completion, ``help``)."""
    return sorted({*globals(), *__all__})
