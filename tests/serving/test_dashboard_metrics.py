"""/metrics against vLLM's Grafana dashboard (vllm-project/vllm,
examples/online_serving/prometheus_grafana/grafana.json; its Cache Utilization panel reads
vllm:kv_cache_usage_perc since vllm PR #27133, vllm:gpu_cache_usage_perc before): every series its
PromQL reads exists under the same name, type and labels, parsed by prometheus_client's own parser."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.server import Server
from tests.serving.utils import HANG_GUARD_S, body, server_cfg

# What each of the dashboard's expressions reads (its panels: E2E Request Latency, Token Throughput, Time
# Per Output Token Latency, Scheduler State, Time To First Token Latency, Cache Utilization, Request Prompt
# Length, Request Generation Length, Finish Reason, Queue Time, Requests Prefill and Decode Time, Max
# Generation Token in Sequence Group): the family, its type, the samples the expression names, and the
# labels it filters or groups by. Every expression filters on model_name="$model_name", a variable the
# dashboard fills from label_values({__name__=~"vllm:.*"}, model_name).
DASHBOARD = {
    "vllm:e2e_request_latency_seconds": ("histogram", ("_bucket", "_sum", "_count"), ()),
    "vllm:time_to_first_token_seconds": ("histogram", ("_bucket", "_sum", "_count"), ()),
    "vllm:time_per_output_token_seconds": ("histogram", ("_bucket", "_sum", "_count"), ()),
    "vllm:request_prompt_tokens": ("histogram", ("_bucket",), ()),
    "vllm:request_generation_tokens": ("histogram", ("_bucket",), ()),
    "vllm:request_queue_time_seconds": ("histogram", ("_sum",), ()),
    "vllm:request_prefill_time_seconds": ("histogram", ("_sum",), ()),
    "vllm:request_decode_time_seconds": ("histogram", ("_sum",), ()),
    "vllm:request_max_num_generation_tokens": ("histogram", ("_sum",), ()),
    "vllm:prompt_tokens": ("counter", ("_total",), ()),
    "vllm:generation_tokens": ("counter", ("_total",), ()),
    "vllm:request_success": ("counter", ("_total",), ("finished_reason",)),
    "vllm:num_requests_running": ("gauge", ("",), ()),
    "vllm:num_requests_waiting": ("gauge", ("",), ()),
    "vllm:kv_cache_usage_perc": ("gauge", ("",), ()),
}


@pytest.fixture(scope="module")
def scrape():
    with Server(server_cfg(), "local") as s:
        with httpx.Client(base_url=s.url, timeout=HANG_GUARD_S) as c:
            for stream in (False, True):
                assert c.post("/v1/completions", json=body(max_tokens=5, stream=stream)).status_code == 200
            model_ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
            text = c.get("/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}, model_ids


def test_every_series_the_dashboard_reads_is_there_with_its_type_and_labels(scrape):
    families, model_ids = scrape
    for name, (kind, suffixes, labels) in DASHBOARD.items():
        family = families.get(name)
        assert family is not None, f"{name} is missing"
        assert family.type == kind, (name, family.type)
        for suffix in suffixes:
            samples = [x for x in family.samples if x.name == name + suffix]
            assert samples, f"{name}{suffix} has no sample"
            for x in samples:
                assert x.labels["model_name"] in model_ids, (x.name, x.labels)  # the $model_name variable
                assert set(labels) <= set(x.labels), (x.name, x.labels)
        if kind == "histogram":  # histogram_quantile needs cumulative buckets ending at +Inf = _count
            buckets = [x for x in family.samples if x.name == name + "_bucket"]
            assert buckets[-1].labels["le"] == "+Inf"
            counts = [x.value for x in buckets]
            assert counts == sorted(counts)
            (count,) = [x.value for x in family.samples if x.name == name + "_count"]
            assert buckets[-1].value == count


def test_the_dashboards_panels_have_data_after_requests(scrape):
    families, _ = scrape

    def value(name, sample, **labels):
        return sum(x.value for x in families[name].samples
                   if x.name == sample and all(x.labels.get(k) == v for k, v in labels.items()))

    assert value("vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == 2
    assert value("vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 2
    assert value("vllm:time_per_output_token_seconds", "vllm:time_per_output_token_seconds_count") == 2 * 4
    assert value("vllm:generation_tokens", "vllm:generation_tokens_total") == 2 * 5
    assert value("vllm:request_success", "vllm:request_success_total", finished_reason="length") == 2
    assert value("vllm:request_max_num_generation_tokens", "vllm:request_max_num_generation_tokens_sum") == 2 * 5
    assert 0 < value("vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_sum") < 10  # seconds


def test_no_gpu_cache_series_the_docs_say_is_not_exported(scrape):
    """The dashboards before vllm PR #27133 read vllm:gpu_cache_usage_perc (and older ones
    vllm:cpu_cache_usage_perc, vllm:num_requests_swapped): vLLM's V1 engine no longer exports them by
    default, nor does this server; docs/serving.md says to read vllm:kv_cache_usage_perc instead."""
    families, _ = scrape
    for name in ("vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:num_requests_swapped"):
        assert name not in families
