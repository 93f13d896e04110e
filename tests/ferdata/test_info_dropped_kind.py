"""A hand-edited ``dropped_in_preparation`` (not reasons to counts) is named by the _info.json check, as every other
field is, not a TypeError traceback from evaluate's sums (audit h120)."""
from __future__ import annotations

import pytest

from ferdata.summary import check_info


@pytest.mark.parametrize("bad", [3, ["no_face"], {"no_face": "3"}])
def test_a_damaged_dropped_in_preparation_is_named(bad):
    check_info({"shards": [], "dropped_in_preparation": {"no_face": 3}})
    with pytest.raises(TypeError, match="dropped_in_preparation is not drop reasons to counts"):
        check_info({"shards": [], "dropped_in_preparation": bad})
