"""SamplingParams validation: bad values fail with the field named."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 0.0),
                                         ("top_p", 1.5), ("top_k", -1)])
def test_sampling_params_rejects_bad_values(field, value):
    from r1vfree_mcore.rollout.generator import SamplingParams

    kw = dict(max_new_tokens=4, eos_token_ids=(1,), pad_token_id=0) | {field: value}
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**kw)
