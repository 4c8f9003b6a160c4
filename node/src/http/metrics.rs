//! `/metrics`: Prometheus (OpenMetrics text). Request and token counters and latency
//! histograms are updated as requests run; queue depth, KV blocks, peers and tasks are
//! read when scraped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

type Labels = Vec<(&'static str, String)>;

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    prompt_tokens: Family<Labels, Counter>,
    generated_tokens: Family<Labels, Counter>,
    cached_tokens: Family<Labels, Counter>,
    ttft: Family<Labels, Histogram, fn() -> Histogram>,
    token_latency: Family<Labels, Histogram, fn() -> Histogram>,
    queue_depth: Family<Labels, Gauge>,
    placement: Histogram,
    kv_hits: Family<Labels, Gauge>,
    kv_misses: Family<Labels, Gauge>,
    kv_blocks: Family<Labels, Gauge>,
    kv_evicted: Family<Labels, Gauge>,
    lookahead: Family<Labels, Gauge>,
    /// The KV exchange's counters, by name (`kv_blocks_fetched`, ...).
    exchange: Family<Labels, Gauge>,
    peers: Gauge,
    members: Gauge,
    tasks: Family<Labels, Gauge>,
}

fn ttft_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn token_histogram() -> Histogram {
    // 0.5 ms to about 1 s per token.
    Histogram::new(exponential_buckets(0.0005, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pyagent");
        let m = Self {
            requests: Family::default(),
            prompt_tokens: Family::default(),
            generated_tokens: Family::default(),
            cached_tokens: Family::default(),
            ttft: Family::new_with_constructor(ttft_histogram as fn() -> Histogram),
            token_latency: Family::new_with_constructor(token_histogram as fn() -> Histogram),
            queue_depth: Family::default(),
            // 10 µs to about 80 ms.
            placement: Histogram::new(exponential_buckets(0.000_01, 2.0, 14)),
            kv_hits: Family::default(),
            kv_misses: Family::default(),
            kv_blocks: Family::default(),
            kv_evicted: Family::default(),
            lookahead: Family::default(),
            exchange: Family::default(),
            peers: Gauge::default(),
            members: Gauge::default(),
            tasks: Family::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests answered, by path and status", m.requests.clone());
        registry.register("prompt_tokens", "Prompt tokens of served generations, by model", m.prompt_tokens.clone());
        registry.register("generated_tokens", "Tokens generated, by model", m.generated_tokens.clone());
        registry.register("cached_prompt_tokens", "Prompt tokens whose KV blocks were reused, by model", m.cached_tokens.clone());
        registry.register("time_to_first_token_seconds", "From request to first token, by model", m.ttft.clone());
        registry.register("time_per_output_token_seconds", "Decode time per generated token, by model", m.token_latency.clone());
        registry.register("placement_seconds", "Choosing the peer of a request: adverts read and costs ranked", m.placement.clone());
        registry.register("queue_depth", "Requests queued or running at a model's worker", m.queue_depth.clone());
        registry.register("kv_block_hits", "KV pool lookups that found a block (this run)", m.kv_hits.clone());
        registry.register("kv_block_misses", "KV pool lookups that found none (this run)", m.kv_misses.clone());
        registry.register("kv_blocks_stored", "KV blocks held in the pool now", m.kv_blocks.clone());
        registry.register("kv_blocks_evicted", "KV blocks evicted from the pool (this run)", m.kv_evicted.clone());
        registry.register(
            "lookahead_tokens",
            "Tokens guessed in decode passes (this run), by model and what: guessed, right (each right guess saved a pass)",
            m.lookahead.clone(),
        );
        registry.register(
            "kv_exchange",
            "KV blocks between peers (this run), by what: blocks_fetched, bytes_fetched, blocks_fetched_bulk (of those, over the bulk path), blocks_served, bytes_served, fetch_failures, bad_blocks, fallbacks (prefixes partly computed instead), blocks_offloaded, blocks_kept_for_peers, prefills_served, blocks_prefilled_by_peers, fetch_bytes_per_second",
            m.exchange.clone(),
        );
        registry.register("connected_peers", "Peers with an open connection", m.peers.clone());
        registry.register("members", "Peers in the membership view", m.members.clone());
        registry.register("tasks", "Tasks of this run: submitted, running, executed", m.tasks.clone());
        Self { registry, ..m }
    }
}

impl Metrics {
    /// A request answered with `status`.
    pub fn answered(&self, path: &str, status: u16) {
        self.requests.get_or_create(&vec![("path", path.to_owned()), ("status", status.to_string())]).inc();
    }

    /// A request refused before its handler ran.
    pub fn refused(&self, path: &str, status: u16) {
        // Unknown paths share one label value: a scanner cannot grow the registry.
        let known = ["/v1/models", "/v1/chat/completions", "/v1/completions", "/metrics"];
        let path = if known.contains(&path) { path } else { "other" };
        self.answered(path, status);
    }

    /// A request placed.
    pub fn placed(&self, secs: f64) {
        self.placement.observe(secs);
    }

    /// A finished generation.
    pub fn generated(&self, model: &str, prompt: usize, cached: usize, tokens: usize, ttft_secs: f64, decode_secs: f64) {
        let labels = vec![("model", model.to_owned())];
        self.prompt_tokens.get_or_create(&labels).inc_by(prompt as u64);
        self.cached_tokens.get_or_create(&labels).inc_by(cached as u64);
        self.generated_tokens.get_or_create(&labels).inc_by(tokens as u64);
        self.ttft.get_or_create(&labels).observe(ttft_secs);
        if tokens > 0 {
            self.token_latency.get_or_create(&labels).observe(decode_secs / tokens as f64);
        }
    }
}

/// `GET /metrics`.
pub(super) async fn render(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    for worker in state.inference.local().all() {
        let labels = vec![("model", worker.info().name.clone())];
        let load = worker.load();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        m.queue_depth.get_or_create(&labels).set(get(&load.requests));
        m.kv_hits.get_or_create(&labels).set(get(&load.kv_hits));
        m.kv_misses.get_or_create(&labels).set(get(&load.kv_misses));
        m.kv_blocks.get_or_create(&labels).set(get(&load.kv_blocks));
        m.kv_evicted.get_or_create(&labels).set(get(&load.kv_evicted));
        for (what, value) in [("guessed", &load.lookahead_guessed), ("right", &load.lookahead_right)] {
            m.lookahead.get_or_create(&vec![("model", worker.info().name.clone()), ("what", what.to_owned())]).set(get(value));
        }
    }
    if let Some(kv) = state.inference.kv() {
        let s = kv.stats();
        let values = [
            ("blocks_fetched", s.blocks_fetched as i64),
            ("bytes_fetched", s.bytes_fetched as i64),
            ("blocks_fetched_bulk", s.blocks_fetched_bulk as i64),
            ("blocks_served", s.blocks_served as i64),
            ("bytes_served", s.bytes_served as i64),
            ("fetch_failures", s.fetch_failures as i64),
            ("bad_blocks", s.bad_blocks as i64),
            ("fallbacks", s.fallbacks as i64),
            ("blocks_offloaded", s.blocks_offloaded as i64),
            ("blocks_kept_for_peers", s.blocks_kept_for_peers as i64),
            ("prefills_served", s.prefills_served as i64),
            ("blocks_prefilled_by_peers", s.blocks_prefilled_by_peers as i64),
            ("fetch_bytes_per_second", s.fetch_bytes_per_s as i64),
        ];
        for (what, value) in values {
            m.exchange.get_or_create(&vec![("what", what.to_owned())]).set(value);
        }
    }
    if let Ok(status) = state.client.status().await {
        m.peers.set(status.connected_peers as i64);
        m.members.set(status.members as i64);
        for (kind, n) in [("submitted", status.tasks.submitted), ("running", status.tasks.running), ("executed", status.tasks.executed)] {
            m.tasks.get_or_create(&vec![("state", kind.to_owned())]).set(n as i64);
        }
    }
    let mut text = String::new();
    if encode(&mut text, &m.registry).is_err() {
        return super::Refusal(pyagent_protocol::openai::ApiError::internal("cannot encode the metrics")).into_response();
    }
    m.answered("/metrics", 200);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
