"""Build the Grafana dashboards (JSON) from the panel lists below: ``python build.py`` writes them,
``python build.py --check`` fails when a committed file differs (tests/test_k8s_manifests.py runs it).

Three dashboards, provisioned by ConfigMaps labelled grafana_dashboard="1" (kube-prometheus-stack's
Grafana sidecar picks them up): self-play (RL), SFT data generation, services.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (title, unit, [(expr, legend), ...]); two panels per row
RL = ("MedSeRL self-play (RL)", "medserl-rl", [
    ("Mean reward by mode (5m)", "none", [("medserl:reward_by_mode:mean5m", "{{mode}}"),
                                          ("medserl:reward:mean5m", "all")]),
    ("Outcomes (the reward's parts)", "ops", [("sum by (outcome) (rate(medserl_verdicts_total[5m]))", "{{outcome}}")]),
    ("Fool rate by mode", "percentunit", [("medserl:fool_rate:ratio5m", "{{mode}}")]),
    ("Detection rate (injected) and false-flag rate (safe)", "percentunit", [
        ("medserl_detection_rate", "detection"), ("medserl_false_flag_rate", "false flag")]),
    ("KL to the SFT reference (last learner step)", "none", [('medserl_rl_step_stat{stat="mean_kl"}', "KL")]),
    ("Learner step: loss, clip fraction, grad norm", "none", [
        ('medserl_rl_step_stat{stat=~"loss|clip_fraction|grad_norm"}', "{{stat}}")]),
    ("Policy version", "none", [("max by (service) (medserl_policy_version)", "{{service}}")]),
    ("Staleness of trained groups (versions)", "none", [
        ("histogram_quantile(0.95, sum by (le) (rate(medserl_rl_staleness_versions_bucket[15m])))", "p95"),
        ("sum(rate(medserl_rl_staleness_versions_sum[15m])) / clamp_min(sum(rate(medserl_rl_staleness_versions_count[15m])), 1e-9)",
         "mean")]),
    ("Learner: groups by fate", "ops", [("sum by (fate) (rate(medserl_rl_groups_total[5m]))", "{{fate}}")]),
    ("Learner idle: injector waiting for the learner / admission budget", "percentunit", [
        ("sum(rate(medserl_admission_paused_seconds_total[5m]))", "injector paused (share of time)"),
        ("sum(medserl_admission_in_flight_groups)", "groups in flight"),
        ("sum(medserl_admission_budget_groups)", "admission budget")]),
    ("Rollouts/s by mode", "ops", [("medserl:rollouts:rate5m", "{{mode}}")]),
    ("Verifier pass rate", "percentunit", [("medserl:verifier_pass:ratio5m", "{{mode}}")]),
    ("Learner mean reward (last batch)", "none", [("medserl_train_mean_reward", "mean reward")]),
    ("Assessor answers that did not parse", "ops", [("sum(rate(medserl_assessor_unparsed_total[5m]))", "unparsed")]),
    ("Learner batch: reward and its parts", "none", [
        ('medserl_rl_step_stat{stat=~"reward_total|reward_format|reward_verifier|reward_game"}', "{{stat}}")]),
    ("Learner batch: valid edits and fool rate by mode", "percentunit", [
        ('medserl_rl_step_stat{stat=~"parseable_rate|valid_rate|fool_rate|fool_rate_inject|fool_rate_paraphrase"}',
         "{{stat}}")]),
    ("Learner batch: detection and false-flag rate", "percentunit", [
        ('medserl_rl_step_stat{stat=~"detection_rate|false_flag_rate"}', "{{stat}}")]),
    ("Off-policy correction: importance ratio", "none", [
        ('medserl_rl_step_stat{stat=~"is_ratio_mean|is_ratio_max|is_corrected_fraction"}', "{{stat}}")]),
    ("Policy entropy and KL loss term", "none", [('medserl_rl_step_stat{stat=~"entropy|kl_loss"}', "{{stat}}")]),
    ("Learner throughput and idle fraction", "none", [
        ('medserl_rl_step_stat{stat=~"rollouts_per_s|idle_fraction|staleness_mean|staleness_max"}', "{{stat}}")]),
])
DATA = ("MedSeRL SFT data generation", "medserl-data", [
    ("Examples kept and dropped, by kind", "ops", [
        ("sum by (kind, accepted) (rate(medserl_generator_examples_total[5m]))", "{{kind}} accepted={{accepted}}")]),
    ("Verifier: failed checks", "ops", [("sum by (check) (rate(medserl_verifier_check_failures_total[5m]))", "{{check}}")]),
    ("Tokens/s by kind", "short", [("sum by (kind) (rate(medserl_generator_tokens_total[5m]))", "{{kind}}")]),
    ("Spend (USD): total and last hour", "currencyUSD", [
        ("sum(medserl_generator_cost_usd_total)", "total (this process)"),
        ("sum(increase(medserl_generator_cost_usd_total[1h]))", "last hour")]),
    ("API requests by outcome", "ops", [("sum by (outcome) (rate(medserl_generator_requests_total[5m]))", "{{outcome}}")]),
    ("Rate-limit waits (429)", "ops", [
        ('sum by (task) (rate(medserl_generator_requests_total{outcome="rate_limited"}[5m]))', "{{task}}")]),
    ("SFT loss", "none", [('medserl_train_loss{phase="sft"}', "loss")]),
    ("SFT tokens/s and learning rate", "short", [
        ('medserl_train_tokens_per_second{phase="sft"}', "tokens/s"),
        ('medserl_train_learning_rate{phase="sft"}', "learning rate")]),
])
SERVICES = ("MedSeRL services", "medserl-services", [
    ("Targets up", "none", [('sum by (job, component) (up{job=~"medserl|medserl-vllm|medserl-kafka"})', "{{job}} {{component}}")]),
    ("Serving (health)", "none", [("medserl_service_up", "{{service}}")]),
    ("gRPC requests by code", "reqps", [("sum by (service, method, code) (rate(medserl_grpc_requests_total[5m]))",
                                         "{{service}} {{method}} {{code}}")]),
    ("gRPC error ratio", "percentunit", [
        ('sum by (service) (rate(medserl_grpc_requests_total{code!="OK"}[5m])) / clamp_min(sum by (service) (rate(medserl_grpc_requests_total[5m])), 1e-9)',
         "{{service}}")]),
    ("Message processing latency p95", "s", [
        ("histogram_quantile(0.95, sum by (service, topic, le) (rate(medserl_processing_seconds_bucket[5m])))",
         "{{service}} {{topic}}")]),
    ("Model call latency p95", "s", [
        ("histogram_quantile(0.95, sum by (le) (rate(medserl_verdict_seconds_bucket[5m])))", "assessor verdict"),
        ("histogram_quantile(0.95, sum by (service, le) (rate(medserl_generation_seconds_bucket[5m])))", "{{service}} generate"),
        ("histogram_quantile(0.95, sum by (mode, le) (rate(medserl_verify_seconds_bucket[5m])))", "verify {{mode}}")]),
    ("Kafka consumer lag", "short", [
        ('sum by (consumergroup, topic) (kafka_consumergroup_lag{consumergroup=~"medserl-.*"})', "{{consumergroup}} {{topic}}")]),
    ("Messages in / out", "ops", [
        ("sum by (service, topic) (rate(medserl_messages_consumed_total[5m]))", "in {{service}} {{topic}}"),
        ("sum by (service, topic) (rate(medserl_messages_produced_total[5m]))", "out {{service}} {{topic}}")]),
    ("Dead letters/s", "ops", [("sum by (service, error_class) (rate(medserl_dead_letters_total[5m]))",
                                "{{service}} {{error_class}}")]),
    ("In flight and duplicates skipped", "short", [
        ("sum by (service) (medserl_inflight_messages)", "in flight {{service}}"),
        ("sum by (service) (rate(medserl_duplicates_skipped_total[5m]))", "duplicates/s {{service}}")]),
    ("vLLM tokens/s", "short", [
        ("sum by (component) (rate(vllm:generation_tokens_total[5m]))", "{{component}} generated"),
        ("sum by (component) (rate(vllm:prompt_tokens_total[5m]))", "{{component}} prompt"),
        ("sum by (service) (rate(medserl_generated_tokens_total[5m]))", "{{service}} (MedSeRL count)")]),
    ("vLLM requests and KV cache", "short", [
        ("sum by (component) (vllm:num_requests_running)", "{{component}} running"),
        ("sum by (component) (vllm:num_requests_waiting)", "{{component}} waiting"),
        ("max by (component) (vllm:kv_cache_usage_perc)", "{{component}} KV cache")]),
    ("vLLM latency p95", "s", [
        ("histogram_quantile(0.95, sum by (component, le) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))", "{{component}} e2e"),
        ("histogram_quantile(0.95, sum by (component, le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))", "{{component}} TTFT")]),
    ("GPU utilization and memory", "percent", [
        ("DCGM_FI_DEV_GPU_UTIL", "{{Hostname}} gpu {{gpu}}"),
        ("DCGM_FI_DEV_FB_USED", "{{Hostname}} gpu {{gpu}} MiB used")]),
    ("Kafka partition health", "short", [
        ("sum(kafka_server_replicamanager_underreplicatedpartitions)", "under-replicated"),
        ("sum(kafka_controller_kafkacontroller_offlinepartitionscount)", "offline"),
        ("sum(kafka_topic_partition_under_replicated_partition)", "under-replicated (exporter)")]),
    ("Kafka messages in/s", "ops", [("sum(rate(kafka_server_brokertopicmetrics_messagesin_total[5m]))", "messages in")]),
])
DASHBOARDS = {"medserl-rl.json": RL, "medserl-data.json": DATA, "medserl-services.json": SERVICES}


def dashboard(title: str, uid: str, panels: list) -> dict:
    out = []
    for i, (panel_title, unit, targets) in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": panel_title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + j)}
                        for j, (expr, legend) in enumerate(targets)],
        })
    return {
        "title": title, "uid": uid, "schemaVersion": 39, "version": 1, "editable": False,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["medserl"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "current": {"text": "Prometheus", "value": "prometheus"}}]},
        "links": [{"title": "MedSeRL", "type": "dashboards", "tags": ["medserl"], "asDropdown": True}],
        "panels": out,
    }


def render() -> dict[str, str]:
    return {name: json.dumps(dashboard(*spec), indent=1) + "\n" for name, spec in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
