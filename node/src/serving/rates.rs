//! The prefill and decode rates a model advertises (tokens/s, what placement divides work
//! by): a probe's at start, then what the model's own runs measure. The probe is one short
//! generation taken while the node loads — in a lab where several nodes start at once on
//! the same cores it measured 151–224 prefill and 9–11 decode tokens/s against 550–750 and
//! 60–140 once running — so the first run that measures a rate replaces it, and later ones
//! move it by an exponentially weighted average ([`WEIGHT`]).
//!
//! Which runs measure what: a prefill rate only from a run that reused nothing (a prompt
//! of at least [`MIN_PREFILL_TOKENS`], its time without a fetch or a cache build in it);
//! a decode rate from a run of at least [`MIN_DECODE_TOKENS`] generated tokens, lookahead
//! included (the rate ordinary requests get). One writer (the model's worker), any number
//! of readers (adverts, placement).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Prompt tokens a run must compute, none reused, to measure the prefill rate.
pub const MIN_PREFILL_TOKENS: usize = 64;
/// Tokens a run must generate to measure the decode rate.
pub const MIN_DECODE_TOKENS: usize = 8;
/// The weight of a new measurement against the rate so far (after the first).
pub const WEIGHT: f64 = 0.3;

/// What one run measured, as far as the rates go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSample {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    pub generated: usize,
    pub decode_secs: f64,
}

impl RunSample {
    /// Prompt tokens/s, when the run computed its whole prompt and it was long enough.
    pub fn prefill_rate(&self) -> Option<f64> {
        (self.cached_tokens == 0 && self.prompt_tokens >= MIN_PREFILL_TOKENS && self.prefill_secs > 0.0).then(|| self.prompt_tokens as f64 / self.prefill_secs)
    }

    /// Generated tokens/s, when the run generated enough of them.
    pub fn decode_rate(&self) -> Option<f64> {
        (self.generated >= MIN_DECODE_TOKENS && self.decode_secs > 0.0).then(|| self.generated as f64 / self.decode_secs)
    }
}

/// One advertised rate: unknown (0), then the probe's until a run measures one, then
/// followed.
#[derive(Debug, Default)]
pub struct Followed {
    value: AtomicU32,
    measured: AtomicBool,
}

impl Followed {
    /// The start-up probe's rate: stands until a run measures one.
    pub fn probe(&self, rate: u32) {
        if !self.measured.load(Ordering::Relaxed) {
            self.value.store(rate, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// Takes a run's measurement (tokens/s; non-finite or non-positive ones are ignored).
    pub fn observe(&self, sample: f64) {
        if !sample.is_finite() || sample <= 0.0 {
            return;
        }
        let first = !self.measured.swap(true, Ordering::Relaxed);
        self.value.store(next(self.get(), first, sample), Ordering::Relaxed);
    }
}

/// The rate after `sample`: the sample itself when it is the first measured one, else the
/// weighted average; at least 1 token/s (0 means "unknown" to placement).
pub fn next(current: u32, first: bool, sample: f64) -> u32 {
    let value = if first { sample } else { (1.0 - WEIGHT) * f64::from(current) + WEIGHT * sample };
    value.round().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// A model's prefill and decode rates.
#[derive(Debug, Default)]
pub struct Rates {
    pub prefill: Followed,
    pub decode: Followed,
}

impl Rates {
    /// Takes what a run measured.
    pub fn observe(&self, run: &RunSample) {
        if let Some(rate) = run.prefill_rate() {
            self.prefill.observe(rate);
        }
        if let Some(rate) = run.decode_rate() {
            self.decode.observe(rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates as the worker starts them: unknown, then the probe's.
    fn probed(prefill: u32, decode: u32) -> Rates {
        let rates = Rates::default();
        rates.prefill.probe(prefill);
        rates.decode.probe(decode);
        rates
    }

    fn run(prompt_tokens: usize, cached_tokens: usize, prefill_secs: f64, generated: usize, decode_secs: f64) -> RunSample {
        RunSample { prompt_tokens, cached_tokens, prefill_secs, generated, decode_secs }
    }

    #[test]
    fn the_first_measured_run_replaces_the_probe_and_later_ones_move_it_by_the_weight() {
        // The lab's probe: 160 prefill, 10 decode tokens/s; the model runs at 600 / 60.
        let rates = probed(160, 10);
        rates.observe(&run(600, 0, 1.0, 60, 1.0));
        assert_eq!((rates.prefill.get(), rates.decode.get()), (600, 60));
        // A slower run moves the rates 30% of the way, not all of it.
        rates.observe(&run(300, 0, 1.0, 30, 1.0));
        assert_eq!((rates.prefill.get(), rates.decode.get()), (510, 51));
        assert_eq!(next(510, false, 510.0), 510, "a steady rate stays put");
    }

    #[test]
    fn runs_that_do_not_measure_a_rate_leave_it_alone() {
        let rates = probed(160, 10);
        // A prompt that reused blocks (its time holds a cache build or a fetch), one too
        // short, a run of one token (max_tokens 1: no decode to speak of), zero times.
        for r in [run(600, 512, 0.1, 1, 0.0), run(32, 0, 0.05, 4, 0.1), run(600, 0, 0.0, 0, 0.0)] {
            rates.observe(&r);
            assert_eq!((rates.prefill.get(), rates.decode.get()), (160, 10), "{r:?}");
        }
        // Each rate on its own: this run measures decoding only.
        rates.observe(&run(600, 512, 0.1, 64, 0.5));
        assert_eq!((rates.prefill.get(), rates.decode.get()), (160, 128));
        // Nonsense samples are ignored; a tiny one still leaves a known (non-zero) rate.
        rates.prefill.observe(f64::NAN);
        rates.prefill.observe(-5.0);
        assert_eq!(rates.prefill.get(), 160);
        rates.prefill.observe(0.1);
        assert_eq!(rates.prefill.get(), 1);
    }
}
