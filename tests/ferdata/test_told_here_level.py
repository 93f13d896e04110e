"""warnings_told_here on the other ranks keeps a stricter logging.disable the user set (review h53)."""
from __future__ import annotations

import logging

from ferdata.errors import warnings_told_here


def test_a_level_the_user_disabled_stays_disabled_inside_the_block(caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("ferdata.test_told_here")
    logging.disable(logging.CRITICAL)
    try:
        with warnings_told_here(False):
            log.error("hidden by the user's logging.disable(CRITICAL)")
        assert logging.root.manager.disable == logging.CRITICAL
    finally:
        logging.disable(logging.NOTSET)
    assert "hidden" not in caplog.text
    with warnings_told_here(False):
        log.warning("a rank's repeat")
        log.error("an error of its own")
    assert "repeat" not in caplog.text and "its own" in caplog.text and logging.root.manager.disable == 0
