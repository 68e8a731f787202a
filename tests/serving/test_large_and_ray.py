"""Llama2-70B timing-only on 32 devices behind the API, and the server on Ray actors."""
from __future__ import annotations

import openai
import pytest

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset


def test_llama2_70b_timing_only_on_32_devices_serves():
    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(32, 80, 1), numerics="off")
    cfg.server.port = 0
    with Server(cfg, "local") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        prompt = list(range(100, 164))
        outs = [client.completions.create(model="llama2-70b", prompt=prompt, max_tokens=12, seed=5,
                                          extra_body={"ignore_eos": True, "return_token_ids": True})
                for _ in range(2)]
        timer = s.loop.engine.timer
    ids = [o.choices[0].model_extra["token_ids"] for o in outs]
    assert len(ids[0]) == 12 and ids[0] == ids[1]  # the seeded stand-in sampler
    cent = outs[0].model_extra["cent"]
    assert cent["ttft_s"] == pytest.approx(sum(timer.token_s(L) for L in range(1, 65)), rel=1e-9)
    assert cent["tpot_s"] == pytest.approx(sum(timer.token_s(L) for L in range(65, 76)) / 11, rel=1e-9)


@pytest.mark.ray
def test_server_on_ray_equals_local(ray_cluster):
    results = {}
    for kind in ("local", "ray"):
        cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 2, 2), numerics="full")
        cfg.server.port = 0
        with Server(cfg, kind) as s:
            client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
            r = client.completions.create(model="tiny", prompt=[1, 67, 69, 78, 84], max_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True, "return_token_ids": True})
        results[kind] = (r.choices[0].model_extra["token_ids"], r.model_extra["cent"])
    assert results["ray"] == results["local"]  # same tokens, bit-identical simulated timing
