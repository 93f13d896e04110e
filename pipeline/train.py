"""Stage `train`.  Usage: python -m pipeline.train SELECTION CKPT_DIR LIVE_DIR

Applies ``train.recipe`` (if any), then trains on the shards of every ``train.datasets`` entry as
pinned in ``SELECTION`` (the `select` stage's ``train.json``); the align/derive settings the shards
record go into the checkpoints for inference (params.yaml's, with a warning, for shards of an earlier version
that do not record them; refused when their faces' side is not params.yaml's align.size).
Under torchrun a rank's error goes into torchrun's failure summary (``record``), not only its log.
"""
from torch.distributed.elastic.multiprocessing.errors import record

from ferdata.selection import SPLITS_READ, read_selection
from fermodels.distributed import env_from_os, on_every_rank, pick_device, shutdown, start_ranks
from fermodels.runstate import preprocess_record
from fermodels.train import train
from fermodels.trainparams import train_section
from pipeline._args import setup


@record
def run(params: dict, selection: str, ckpt: str, live: str) -> None:
    env = env_from_os()

    def prepare():
        train_params = train_section(params)
        return train_params, pick_device(train_params.device, env)

    # a machine that cannot join (no GPU where train.device asks for one) stops every rank with its reason
    train_params, _, created = start_ranks(prepare, env)
    # in the process group before reading the selection: a machine whose shards differ from the pinned ones
    # stops every rank with its reason, where the other machines' ranks waited for it until the timeout
    try:
        shards = on_every_rank(lambda: read_selection(selection, train_params.datasets, SPLITS_READ), env)
        train(shards, train_params, ckpt, live, preprocess_record(params))
    finally:
        shutdown(created)


def _failing(err: BaseException):
    """A :func:`start_ranks` preparation that fails with ``err`` (the usage or params mistake already found)."""
    def prepare():
        raise err
    return prepare


if __name__ == "__main__":
    try:
        params, args = setup()        # each machine reads its own params.yaml: a mistake may be one machine's
    except (Exception, SystemExit) as err:      # noqa: BLE001 - told to every rank (they wait to join), then raised
        start_ranks(_failing(err))
        raise
    run(params, *args)
